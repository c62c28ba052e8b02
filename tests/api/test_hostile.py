"""Nobody else gets in: security headers, CSRF, API content types, path traversal, and no
token in any log, event, config or database (that one, through the real server and a worker:
tests/integration/test_token_secrecy.py). In-process: TestClient, no lifespan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.config import Settings
from app.db import ROOT, migrate
from app.main import create_app
from app.models import DatasetEntry, Job, JobStatus, ModelEntry
from tests.helpers.data import ROWS, form, seed_db, write_assets


@pytest.fixture()
def world(tmp_path):
    """An app over tmp_path/home, and tmp_path/outside: a folder it must never read."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    seed_db(home / "prospect.db")
    app = create_app(Settings(home=home))
    migrate(app.state.engine)
    model, data = write_assets(home)
    write_assets(outside)
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="m", path=str(model), source="test"))
        s.add(DatasetEntry(id="d", path=str(data), rows=len(ROWS)))
        s.commit()
    if any(outside.resolve().is_relative_to(r) for r in (Path.home().resolve(), home)):
        pytest.skip("tmp_path lies inside $HOME: no folder outside the allowed roots")
    return app, home, outside


@pytest.fixture()
def client(world):
    return TestClient(world[0], base_url="http://127.0.0.1")


def job(**over) -> dict:
    return {"backend": "torch", "method": "kto", "model": "m", "dataset": "d",
            "params": {"max_steps": 1}, **over}


# --- headers --------------------------------------------------------------------------------
def test_every_response_carries_the_security_headers(client):
    responses = [client.get("/"), client.get("/jobs/new"), client.get("/api/jobs"),
                 client.get("/static/css/app.css"), client.get("/api/jobs/999"),
                 client.get("/jobs/999"), client.get("/openapi.json"),
                 client.get("/api/jobs", headers={"Host": "evil.example"}),
                 client.post("/api/jobs", content="x", headers={"Content-Type": "text/plain"})]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 404, 200, 421, 415]
    for r in responses:
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"


def test_the_docs_page_runs_only_its_own_inline_script(client):
    """/docs (Swagger UI from its CDN, as FastAPI serves it) gets a policy of its own that
    allows exactly the inline script the page holds, by its hash."""
    import base64
    import hashlib

    r = client.get("/docs")
    [script] = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = r.headers["content-security-policy"]
    assert f"'sha256-{digest}'" in csp and "unsafe-eval" not in csp
    assert "script-src 'self' https://cdn.jsdelivr.net 'sha256-" in csp
    assert "cdn.jsdelivr" not in client.get("/api/jobs").headers["content-security-policy"]


def test_templates_need_no_inline_script_style_or_eval():
    for path in (ROOT / "templates").glob("*.html"):
        html = path.read_text()
        assert not re.search(r"\sstyle=", html), path.name
        assert not re.search(r"<script(?![^>]*\ssrc=)", html), path.name
        assert not re.search(r"\s(on\w+|hx-on[:\w-]*)=", html), path.name
        assert not re.search(r"<style", html), path.name
    base = (ROOT / "templates" / "base.html").read_text()
    config = json.loads(re.search(r"name=\"htmx-config\" content='([^']+)'", base)[1])
    assert config["allowEval"] is False and config["includeIndicatorStyles"] is False


# --- CSRF on the forms ------------------------------------------------------------------------
def test_pages_embed_the_token_and_the_form_needs_it(world, client):
    token = world[0].state.csrf_token
    html = client.get("/jobs/new").text
    assert f'<meta name="csrf-token" content="{token}">' in html
    assert f'"X-CSRF-Token": "{token}"' in html
    assert f'name="csrf_token" value="{token}"' in html
    r = client.post("/jobs/new", data=form(), follow_redirects=False)
    assert r.status_code == 403 and "CSRF token" in r.text and "Reload" in r.text
    r = client.post("/jobs/new", data=form(csrf_token="forged"), follow_redirects=False)
    assert r.status_code == 403
    r = client.post("/jobs/new", data=form(), headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403 and "stale" in r.json()["detail"]
    assert client.get("/api/jobs").json() == []  # nothing was created
    r = client.post("/jobs/new", data=form(csrf_token=token), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/jobs/1"  # the no-JS form
    r = client.post("/jobs/new", data=form(), headers={"X-CSRF-Token": token, "HX-Request":
                                                       "true"})
    assert r.headers["hx-redirect"] == "/jobs/2"  # htmx sends the header from base.html


def test_each_server_has_its_own_token(tmp_path):
    a, b = (create_app(Settings(home=tmp_path / n)) for n in "ab")
    assert a.state.csrf_token != b.state.csrf_token and len(a.state.csrf_token) >= 32


# --- API content types: a cross-site form cannot reach the API --------------------------------
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "TEXT/PLAIN;charset=utf-8",
                                   None])
def test_simple_content_types_are_refused_on_api_changes(client, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/api/jobs", content=json.dumps(job()).encode(), headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert client.get("/api/jobs").json() == []


def test_json_scripts_and_the_pages_htmx_buttons_get_through(world, client):
    assert client.post("/api/jobs", json=job()).status_code == 201
    assert client.post("/api/jobs/1/cancel").status_code == 200  # no body, no type: a script
    token = world[0].state.csrf_token
    r = client.post("/api/jobs/1/cancel", headers={"X-CSRF-Token": token, "Content-Type":
                                                   "application/x-www-form-urlencoded"})
    assert r.status_code == 409  # htmx's form-encoded button, with the header: reaches the route
    r = client.delete("/api/jobs/1", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403


def test_another_app_on_this_machine_is_another_origin(client):
    """localhost:3000 is the same site as Prospect but not the same origin: a bodyless POST
    (a "simple" request no preflight guards) from it must not cancel a job."""
    assert client.post("/api/jobs", json=job()).status_code == 201
    for headers in ({"Origin": "http://localhost:3000"}, {"Origin": "http://127.0.0.1:8080"},
                    {"Origin": "http://127.0.0.1:x"}, {"Sec-Fetch-Site": "same-site"},
                    {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/api/jobs/1/cancel", headers=headers)
        assert r.status_code == 403, (headers, r.status_code)
    assert client.get("/api/jobs/1").json()["status"] == "queued"
    own = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/jobs/1/cancel", headers=own).status_code == 200


# --- paths a request names stay inside the allowed folders ------------------------------------
def traversals(home: Path, outside: Path) -> list[tuple[str, str]]:
    """(model, dataset) values that point outside, each by a different trick."""
    up = "/".join([".."] * len(home.parts))
    rel = outside.relative_to(outside.anchor)
    (home / "models" / "link").symlink_to(outside / "models" / "m")
    (home / "datasets" / "link.jsonl").symlink_to(outside / "datasets" / "d.jsonl")
    (home / "datasets" / "dir").symlink_to(outside / "datasets")
    return [
        (f"{home}/models/../../outside/models/m",
         f"{home}/datasets/../../outside/datasets/d.jsonl"),
        (f"{home}/{up}/{rel}/models/m", f"{home}/{up}/{rel}/datasets/d.jsonl"),
        (f"{home}/models/link", f"{home}/datasets/link.jsonl"),
        (f"{home}/models/link/", f"{home}/datasets/dir/d.jsonl"),
        ("~/../../" + str(rel / "models" / "m"), "~/../../" + str(rel / "datasets/d.jsonl")),
        (str(outside / "models" / "m"), str(outside / "datasets" / "d.jsonl")),
    ]


def test_model_and_dataset_paths_cannot_leave_the_allowed_folders(world, client):
    _, home, outside = world
    for model, dataset in traversals(home, outside):
        r = client.post("/api/jobs", json=job(model=model))
        assert r.status_code == 422 and "outside the folders" in r.json()["detail"][0]["msg"], \
            (model, r.text)
        r = client.post("/api/jobs", json=job(dataset=dataset))
        assert r.status_code == 422 and "outside the folders" in r.json()["detail"][0]["msg"], \
            (dataset, r.text)
    assert client.get("/api/jobs").json() == []


@pytest.mark.parametrize("value", ["%2e%2e/%2e%2e/etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                                   "/etc/passwd", "../../etc/passwd", "file:///etc/passwd",
                                   "\\..\\..\\etc\\passwd", "/proc/self/environ",
                                   "/root/a\x00b", "~/\x00/../x", "\x00", "/tmp/\x1b[2J"])
def test_encoded_and_odd_paths_are_plain_422s(client, value):
    for field in ("model", "dataset"):
        r = client.post("/api/jobs", json=job(**{field: value}))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text


@pytest.mark.parametrize("path", [
    "/api/jobs/..%2F..%2Fetc%2Fpasswd", "/api/jobs/%2e%2e/logs", "/api/jobs/1%2F..%2F2",
    "/api/jobs/-1/logs", "/jobs/..%2F..%2Fetc%2Fpasswd/card", "/static/..%2F..%2Fapp%2Fconfig.py",
    "/static/%2e%2e/%2e%2e/app/config.py", "/static/../pyproject.toml",
    "/static/vendor/..%2F..%2F..%2Fpyproject.toml", "/api/jobs/1/logs?offset=-99999999999",
])
def test_traversal_in_url_paths_reads_nothing(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert "PROSPECT_" not in r.text and "[project]" not in r.text


def test_the_event_stream_refuses_odd_input_without_a_500(world, client):
    app = world[0]
    with Session(app.state.engine) as s:
        s.add(Job(backend="torch", method="kto", model="m", dataset="d", status=JobStatus.failed))
        s.commit()
    assert client.get("/api/jobs/1/logs").json()["size"] == 0  # no run folder yet: no 500
    assert client.get("/api/jobs/999/events").status_code == 404
    assert client.get("/api/jobs/1/events?after=-1").status_code == 422
    assert client.get(f"/api/jobs/1/events?after={2**70}").status_code == 422
    for last_id in (b"\xb2", b"99999999999999999999999", b"-3", b"abc"):
        r = client.get("/api/jobs/1/events", headers={"Last-Event-ID": last_id})
        assert r.status_code == 204, (last_id, r.status_code)  # finished: nothing to stream
    r = client.post("/jobs/new", data=form(model_text="/x\x00", csrf_token=app.state.csrf_token))
    assert r.status_code == 422 and "control character" in r.text


def test_deleting_a_job_never_removes_a_folder_outside_runs(world, client):
    app, home, outside = world
    link = home / "runs" / "000001"
    link.symlink_to(outside / "models")
    with Session(app.state.engine) as s:
        s.add(Job(backend="torch", method="kto", model="m", dataset="d", status=JobStatus.failed,
                  run_dir=str(link)))
        s.commit()
    assert client.delete("/api/jobs/1").status_code == 204
    assert (outside / "models" / "m" / "config.json").is_file()
