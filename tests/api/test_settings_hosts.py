"""GET/PUT /api/settings/hosts and the System page's Hosts section (app/web/api/settings.py,
app/web/pages/system.py): saved to <home>/hosts.json, a bad field is a 422 naming it."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

HERE = {"name": "here", "ssh": "127.0.0.1", "ips": ["192.168.1.10"]}
STUDIO = {"name": "studio", "ssh": "studio.local", "ips": ["192.168.1.20"]}


def test_empty_setting_then_put_and_get(client, app):
    assert client.get("/api/settings/hosts").json() == {"backend": "ring", "envs": [],
                                                         "hosts": []}
    body = {"backend": "ring", "envs": [], "hosts": [HERE, STUDIO]}
    r = client.put("/api/settings/hosts", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == body
    assert client.get("/api/settings/hosts").json() == body
    saved = json.loads((app.state.settings.home_dir / "hosts.json").read_text())
    assert saved == body


def test_put_names_the_bad_field(client):
    r = client.put("/api/settings/hosts", json={"hosts": [HERE, {**STUDIO, "ips": ["1.2.3"]}]})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["field"] == "hosts[1].ips[0]"
    assert "not an IPv4 or IPv6 address" in detail["msg"]
    r = client.put("/api/settings/hosts", json={"hosts": [HERE, {**STUDIO, "name": "here"}]})
    assert r.json()["detail"][0]["field"] == "hosts[1].name"
    r = client.put("/api/settings/hosts", json=[HERE])
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "hosts"
    assert client.get("/api/settings/hosts").json()["hosts"] == []  # nothing saved


def test_put_is_guarded_like_every_change(app):
    plain = TestClient(app, base_url="http://127.0.0.1")
    body = {"hosts": [HERE, STUDIO]}
    foreign = plain.put("/api/settings/hosts", json=body,
                        headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    form = plain.put("/api/settings/hosts", content="x=1",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert plain.put("/api/settings/hosts", json=body).status_code == 200  # a script's JSON


def test_hand_broken_file_is_a_422_and_the_page_offers_the_fix(client, app):
    (app.state.settings.home_dir / "hosts.json").write_text("{oops")
    r = client.get("/api/settings/hosts")
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"][0]["msg"]
    page = client.get("/system")
    assert page.status_code == 200
    assert "not valid JSON" in page.text and "{oops" in page.text


def htmx(client, path, **form):
    return client.post(path, data=form, headers={"HX-Request": "true"})


def test_section_add_list_remove(client):
    page = client.get("/system")
    assert 'data-testid="hosts-section"' in page.text and "passwordless ssh" in page.text
    assert "No hosts" in page.text
    r = htmx(client, "/system/hosts/add", name="here", ssh="127.0.0.1", ips="192.168.1.10")
    assert r.status_code == 200 and 'data-host="here"' in r.text and "(this Mac)" in r.text
    htmx(client, "/system/hosts/add", name="studio", ssh="studio.local",
         ips="192.168.1.20, 10.0.0.2")
    hosts = client.get("/api/settings/hosts").json()["hosts"]
    assert hosts[1] == {"name": "studio", "ssh": "studio.local",
                        "ips": ["192.168.1.20", "10.0.0.2"]}
    r = htmx(client, "/system/hosts/remove", name="here")
    assert 'data-host="here"' not in r.text and 'data-host="studio"' in r.text
    assert [h["name"] for h in client.get("/api/settings/hosts").json()["hosts"]] == ["studio"]


def test_section_errors_beside_the_field(client):
    r = htmx(client, "/system/hosts/add", name="studio", ssh="studio.local", ips="")
    assert r.status_code == 200  # htmx swaps only a 2xx
    assert 'id="err-ips"' in r.text and "the ring backend connects the Macs by IP" in r.text
    assert 'value="studio"' in r.text  # what was typed stays
    htmx(client, "/system/hosts/add", name="studio", ssh="studio.local", ips="192.168.1.20")
    r = htmx(client, "/system/hosts/add", name="studio", ssh="mini.local", ips="192.168.1.30")
    assert 'id="err-name"' in r.text and "used twice" in r.text
    r = htmx(client, "/system/hosts/add", name="mini", ssh="mini; reboot", ips="192.168.1.30")
    assert 'id="err-ssh"' in r.text
    r = client.post("/system/hosts/add", data={"name": "x y", "ssh": "a", "ips": "1.2.3.4"})
    assert r.status_code == 422  # without htmx: the refusal's own status


def test_section_backend_and_json(client):
    htmx(client, "/system/hosts/add", name="studio", ssh="studio.local", ips="192.168.1.20")
    r = htmx(client, "/system/hosts/backend", backend="mpi")
    assert 'value="mpi" selected' in r.text
    assert client.get("/api/settings/hosts").json()["backend"] == "mpi"
    r = htmx(client, "/system/hosts/json", json="{not json")
    assert 'id="err-json"' in r.text and "{not json" in r.text
    body = {"backend": "ring", "envs": ["MLX_METAL_FAST_SYNCH=1"], "hosts": [HERE, STUDIO]}
    r = htmx(client, "/system/hosts/json", json=json.dumps(body))
    assert 'data-host="here"' in r.text
    assert client.get("/api/settings/hosts").json() == body
    r = htmx(client, "/system/hosts/json", json=json.dumps({**body, "backend": "nccl"}))
    assert "backend: must be one of ring, jaccl, mpi" in r.text


def test_section_forms_need_the_csrf_token(app):
    plain = TestClient(app, base_url="http://127.0.0.1")
    r = plain.post("/system/hosts/add", data={"name": "a", "ssh": "a", "ips": "1.2.3.4"})
    assert r.status_code == 403
