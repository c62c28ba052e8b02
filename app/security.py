"""Local-app defences: Host check (DNS rebinding), Origin check, optional bearer token."""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
TOKEN_COOKIE = "prospect_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _hostname(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LocalOnlyMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.hosts = LOOPBACK_NAMES | {h.lower() for h in settings.allowed_hosts}
        if not settings.is_loopback and settings.host not in ("0.0.0.0", "::"):
            self.hosts.add(settings.host.lower())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        token = self.settings.api_token
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if token and scope["method"] == "GET" and query.get("token") and \
                _hostname(headers.get("host", "")) in self.hosts and \
                hmac.compare_digest(query["token"][0].encode(), token.encode()):
            # Opening /?token=… once gives this browser a cookie, so the pages, their fetches
            # and EventSource (which cannot send headers) carry the token from then on.
            resp = RedirectResponse(scope["path"], status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            await resp(scope, receive, send)
            return
        problem = self.check(scope["method"], scope["path"], headers)
        if problem:
            status, message = problem
            await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        host = _hostname(headers.get("host", ""))
        if host not in self.hosts:
            return 421, (f"Host {host!r} is not served here; open Prospect at 127.0.0.1 or "
                         "localhost (or add the name to PROSPECT_ALLOWED_HOSTS)")
        origin = headers.get("origin")
        if (method not in SAFE_METHODS and origin
                and _hostname(urlsplit(origin).netloc) not in self.hosts):
            return 403, f"requests from origin {origin!r} are refused"
        token = self.settings.api_token
        if token and not path.startswith("/static/"):
            auth = headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not given:
                cookie = SimpleCookie(headers.get("cookie", ""))
                given = cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return 401, ("this server needs its API token: send Authorization: Bearer "
                             "<token>, or open the dashboard once as /?token=<token>")
        return None
