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
