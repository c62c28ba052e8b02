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


@pytest.mark.parametrize("other", ['a={"x":1}', 'x="abc', "s=abc def", "x[0]=1", "c",
                                   "a=1; b", '=; ;;', "prospect_token_x=1"])
def test_a_cookie_simplecookie_cannot_parse_does_not_hide_the_token(tmp_path, other):
    """Browsers send every cookie of 127.0.0.1 whatever the port: another local app's odd
    cookie before ours must not lock the person out."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(home=tmp_path, api_token="s3cret"))
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    for header in (f"{other}; prospect_token=s3cret", f"prospect_token=s3cret; {other}"):
        r = client.get("/api/methods", headers={"Cookie": header})
        assert r.status_code == 200, (header, r.status_code)
    r = client.get("/api/methods", headers={"Cookie": f"{other}; prospect_token=nope"})
    assert r.status_code == 401


@pytest.mark.parametrize("path", ["/%2F%2Fevil.com", "/%2F%2F%2Fevil.com", "//evil.com",
                                  "/%5Cevil.com", "/%5C%5Cevil.com", "/%2F%5Cevil.com",
                                  "/%09/evil.com", "/jobs/1"])
def test_the_token_login_redirects_only_to_a_path_on_this_server(tmp_path, path):
    import httpx

    app = create_app(Settings(home=tmp_path, api_token="s3cret"))
    transport = httpx.ASGITransport(app=app)

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000"
                                     ) as client:  # the path exactly as given, not cleaned
            return await client.get(httpx.URL(f"http://127.0.0.1:8000{path}?token=s3cret"))

    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    # A thread of its own: where the session's Playwright is open, this thread has its loop.
    with ThreadPoolExecutor(1) as pool:
        r = pool.submit(asyncio.run, get()).result()
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\", "/%5C", "/%5c"))
    target = httpx.URL("http://127.0.0.1:8000").join(location)
    assert target.host == "127.0.0.1", location


@pytest.mark.parametrize(("site", "mode", "dest", "path", "refused"), [
    ("cross-site", "no-cors", "image", "/api/datasets/d/mlx?seed=3", True),
    ("cross-site", "cors", "empty", "/api/jobs", True),
    ("same-site", "no-cors", "image", "/api/datasets/d/mlx?seed=3", True),  # another port
    ("cross-site", "navigate", "iframe", "/api/datasets/d/mlx", True),
    ("cross-site", "navigate", "document", "/jobs/1", False),  # a link someone followed
    ("cross-site", "no-cors", "style", "/static/css/app.css", False),
    ("same-origin", "cors", "empty", "/api/jobs", False),
    ("none", "navigate", "document", "/", False),  # typed in the address bar
    (None, None, None, "/api/jobs", False),  # a script: no Sec-Fetch headers
])
def test_cross_site_gets_are_refused_but_navigations_and_static_files_pass(site, mode, dest,
                                                                           path, refused):
    headers = {"host": "127.0.0.1:8000"}
    for key, value in (("sec-fetch-site", site), ("sec-fetch-mode", mode),
                       ("sec-fetch-dest", dest)):
        if value is not None:
            headers[key] = value
    problem = mw().check("GET", path, headers)
    assert (problem is not None and problem[0] == 403) == refused, problem
