"""Local-app defences: Host check (DNS rebinding), Origin check, optional bearer token,
CSRF token for the pages' forms, and the security headers every response carries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.body_check import read_body
from app.config import Settings

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
TOKEN_COOKIE = "prospect_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
# Content types a cross-site <form> or a no-cors fetch may send without a CORS preflight.
SIMPLE_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
# Only our own files: htmx runs with allowEval off and its indicator styles off (base.html),
# uPlot styles through the CSSOM, which style-src does not govern.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def docs_csp() -> str:
    """FastAPI's /docs page: Swagger UI from its CDN, started by one inline script that this
    policy allows by its hash (nothing else inline runs); Swagger UI styles inline."""
    from fastapi.openapi.docs import get_swagger_ui_html

    html = get_swagger_ui_html(openapi_url="/openapi.json", title="",
                               oauth2_redirect_url="/docs/oauth2-redirect").body.decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in re.findall(r"<script>(.*?)</script>", html, re.S))
    cdn = "https://cdn.jsdelivr.net"
    return (f"default-src 'self'; script-src 'self' {cdn} {hashes}; style-src 'self' {cdn} "
            "'unsafe-inline'; img-src 'self' data: https://fastapi.tiangolo.com; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


def new_csrf_token() -> str:
    """A random token per server process; pages embed it, form posts must return it."""
    return secrets.token_urlsafe(32)


def csrf_ok(given: str | None, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _port(headers: dict[str, str]) -> int:
    """The port the request was sent to, as its Host header says."""
    host = headers.get("host", "")
    tail = host.rsplit("]", 1)[-1] if host.startswith("[") else host
    _, _, port = tail.rpartition(":") if tail.count(":") == 1 else ("", "", "")
    return int(port) if port.isdigit() else 80


def _cookie(header: str, name: str) -> str:
    """Leniently, as browsers and Starlette's request.cookies do: SimpleCookie drops the
    whole header at the first cookie it cannot parse (a={"x":1}, a bare name), and the
    browser sends every 127.0.0.1 cookie, whatever app on whatever port set it."""
    return cookie_parser(header).get(name, "")


def same_site_path(path: str) -> str:
    """A redirect target on this server: '//evil.com' (from /%2F%2Fevil.com) or '/\\evil'
    would be taken by the browser as another host."""
    return "/" + path.lstrip("/\\")


def _redacted(query_string: bytes) -> bytes:
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, "redacted" if k == "token" else v) for k, v in pairs]).encode()


def _with_headers(send: Send, csp: str) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for key, value in [(b"content-security-policy", csp.encode()), *SECURITY_HEADERS]:
                if key.decode() not in headers:
                    headers.raw.append((key, value))
        await send(message)

    return send_with_headers


def is_navigation(headers: dict[str, str]) -> bool:
    """A person opening a link or a bookmark in a tab (not a frame: the pages refuse being
    framed, yet the request itself would still run)."""
    return headers.get("sec-fetch-mode") == "navigate" and \
        headers.get("sec-fetch-dest", "document") == "document"


def refusal_body(path: str, status: int, message: str) -> dict:
    """``{"detail": …}`` as everywhere else; under /v1, OpenAI's error shape, which chat
    clients read (``openai`` raises AuthenticationError on the 401 either way)."""
    if not path.startswith("/v1/"):
        return {"detail": message}
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    code = {401: "invalid_api_key", 421: "misdirected_request"}.get(status, "forbidden")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class LocalOnlyMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, csrf_token: str | None = None):
        self.app = app
        self.settings = settings
        self.csrf_token = csrf_token or new_csrf_token()
        self.docs_csp = docs_csp()
        self.hosts = LOOPBACK_NAMES | {h.lower() for h in settings.allowed_hosts}
        if not settings.is_loopback and settings.host not in ("0.0.0.0", "::"):
            self.hosts.add(settings.host.lower())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send, self.docs_csp if scope["path"] == "/docs" else CSP)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        token = self.settings.api_token
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "token" in query:
            # uvicorn's access log prints this very scope's query string when the response
            # is sent: a token given in the URL must not reach the log.
            scope["query_string"] = _redacted(scope["query_string"])
        if token and scope["method"] == "GET" and query.get("token") and \
                _hostname(headers.get("host", "")) in self.hosts and \
                hmac.compare_digest(query["token"][0].encode(), token.encode()):
            # Opening /?token=… once gives this browser a cookie, so the pages, their fetches
            # and EventSource (which cannot send headers) carry the token from then on.
            resp = RedirectResponse(same_site_path(scope["path"]), status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            await resp(scope, receive, send)
            return
        problem = self.check(scope["method"], scope["path"], headers)
        if problem:
            status, message = problem
            await JSONResponse(refusal_body(scope["path"], status, message),
                               status_code=status)(scope, receive, send)
            return
        receive, refused = await read_body(scope, receive, headers, self.settings)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        host = _hostname(headers.get("host", ""))
        if host not in self.hosts:
            return 421, (f"Host {host!r} is not served here; open Prospect at 127.0.0.1 or "
                         "localhost (or add the name to PROSPECT_ALLOWED_HOSTS)")
        if method not in SAFE_METHODS:
            refused = self.foreign_origin(headers)
            if refused:
                return 403, f"requests from {refused} are refused"
        elif not path.startswith("/static/") and not is_navigation(headers):
            # GETs write caches (an MLX export, token counts): another site's <img> or
            # fetch() must not make them, nor read what they answer.
            site = headers.get("sec-fetch-site")
            if site and site not in ("same-origin", "none"):
                return 403, (f"requests from a {site} page are refused; open Prospect's own "
                             "pages, or call the API from a script")
        token = self.settings.api_token
        if token and not path.startswith("/static/"):
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not given:
                given = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
            if not hmac.compare_digest(given.encode(), token.encode()):
                return 401, ("this server needs its API token: send Authorization: Bearer "
                             "<token>, or open the dashboard once as /?token=<token>")
        if method not in SAFE_METHODS:
            return self.check_forgery(path, headers)
        return None

    def foreign_origin(self, headers: dict[str, str]) -> str | None:
        """Another site, or another app on this machine (a different port: localhost:3000
        is the same *site* as localhost:8000, not the same origin)."""
        origin = headers.get("origin")
        if origin:
            parts = urlsplit(origin)
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                return f"origin {origin!r}"
            if _hostname(parts.netloc) not in self.hosts or port != _port(headers):
                return f"origin {origin!r}"
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site and fetch_site not in ("same-origin", "none"):
            return f"a {fetch_site} page"
        return None

    def check_forgery(self, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """A state change must come from our pages or from a script, not a foreign page.

        A page's htmx requests carry the CSRF header (a custom header: another site cannot
        send it without a CORS preflight, which it never gets). Scripts send JSON, which a
        cross-site form cannot. What is left, a "simple" body without the header, is refused
        on /api; the pages' form handler checks the token in the form field itself.
        """
        given = headers.get(CSRF_HEADER)
        if given is not None:
            if csrf_ok(given, self.csrf_token):
                return None
            return 403, ("the CSRF token is wrong or stale (the server restarted since the "
                         "page was loaded): reload the page and try again")
        if not path.startswith("/api/"):
            return None
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        if ctype in SIMPLE_TYPES or (not ctype and has_body):
            return 415, (f"Content-Type {ctype or '(none)'} is not accepted for a change "
                         "through the API; send JSON with Content-Type: application/json")
        return None
