import pytest

from app.config import Settings
from app.main import create_app
from app.security import LocalOnlyMiddleware


def mw(**kw) -> LocalOnlyMiddleware:
    return LocalOnlyMiddleware(app=None, settings=Settings(**kw))


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000",
                                  "LOCALHOST"])
def test_loopback_hosts_pass(host):
    assert mw().check("GET", "/", {"host": host}) is None


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io",
                                  "", "192.168.1.5:8000"])
def test_other_hosts_are_refused(host):
    assert mw().check("GET", "/", {"host": host})[0] == 421


def test_origin_is_checked_for_state_changes_only():
    m = mw()
    h = {"host": "127.0.0.1:8000", "origin": "http://attacker.example"}
    assert m.check("GET", "/api/jobs", h) is None
    assert m.check("POST", "/api/jobs", h)[0] == 403
    assert m.check("DELETE", "/api/jobs/1", {**h, "origin": "null"})[0] == 403
    assert m.check("POST", "/api/jobs", {**h, "origin": "http://localhost:8000"}) is None


def test_api_token_is_required_when_set():
    m = mw(api_token="s3cret", host="0.0.0.0", allowed_hosts=["box.lan"])
    h = {"host": "box.lan:8000"}
    assert m.check("GET", "/api/jobs", h)[0] == 401
    assert m.check("GET", "/api/jobs", {**h, "authorization": "Bearer wrong"})[0] == 401
    assert m.check("GET", "/api/jobs", {**h, "authorization": "Bearer s3cret"}) is None


def test_a_non_loopback_bind_without_token_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="API token"):
        create_app(Settings(home=tmp_path, host="0.0.0.0"))


def test_the_token_also_guards_pages_and_a_cookie_carries_it(tmp_path):
    m = mw(api_token="s3cret")
    h = {"host": "127.0.0.1:8000"}
    assert m.check("GET", "/", h)[0] == 401
    assert m.check("GET", "/static/css/app.css", h) is None
    assert m.check("GET", "/jobs/1", {**h, "cookie": "prospect_token=s3cret"}) is None
    assert m.check("GET", "/jobs/1", {**h, "cookie": "prospect_token=nope"})[0] == 401


def test_opening_the_dashboard_with_the_token_sets_the_cookie(tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(Settings(home=tmp_path, api_token="s3cret"))
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    assert client.get("/api/methods").status_code == 401
    resp = client.get("/?token=s3cret", follow_redirects=False)
    assert resp.status_code == 303 and "prospect_token=s3cret" in resp.headers["set-cookie"]
    assert "httponly" in resp.headers["set-cookie"].lower()
    client.cookies.set("prospect_token", "s3cret")
    assert client.get("/api/methods").status_code == 200
    client.cookies.clear()
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
