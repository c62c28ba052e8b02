"""Request bodies at the boundary: a size limit for everything but the dataset uploads, and no
lone surrogates in any JSON body.

JSON may carry a lone surrogate as an escape ("\\ud800"); Python's parser accepts it, yet
no UTF-8 file, database text column, log or response can hold it, so it would fail later,
far from the request (a 500, or a stored job that breaks every page listing it). Checking
the parsed body once here covers every field of every route, present and future.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope

from app.config import Settings

# Routes that stream a file of up to PROSPECT_UPLOAD_LIMIT_MB and enforce that limit.
UPLOADS = {("POST", "/api/datasets"), ("POST", "/datasets/upload")}
# A lone surrogate reaches a JSON body only as an escape: \ud800-\udfff.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
SURROGATE_ESCAPE_TEXT = re.compile(SURROGATE_ESCAPE.pattern.decode())


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate_at(value: Any) -> list[str | int] | None:
    """Where in a parsed JSON value the first text UTF-8 cannot encode is (a key or a
    string), as a path of keys and indexes; None if there is none. Iterative: a body may be
    nested as deep as the JSON parser allows."""
    stack: list[tuple[list[str | int], Any]] = [([], value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    return [*path, key.encode("utf-8", "backslashreplace").decode()]
                stack.append(([*path, key], child))
        elif isinstance(item, list):
            stack.extend(([*path, i], child) for i, child in enumerate(item))
    return None


def _is_json(headers: dict[str, str]) -> bool:
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    return not ctype or ctype == "application/json" or ctype.endswith("+json")


def too_large(limit_kib: int) -> Response:
    size = f"{limit_kib // 1024} MiB" if limit_kib % 1024 == 0 else f"{limit_kib} KiB"
    return JSONResponse(status_code=413, content={"detail": (
        f"the request body is over the limit of {size} (PROSPECT_BODY_LIMIT_KIB); a job or "
        "a setting is far smaller. Datasets are uploaded with POST /api/datasets, which "
        "takes files up to PROSPECT_UPLOAD_LIMIT_MB")})


def bad_text(where: list[str | int]) -> Response:
    field = ".".join(str(p) for p in where) or "body"
    return JSONResponse(status_code=422, content={"detail": [{
        "loc": ["body", *where], "field": field, "type": "value_error",
        "msg": f"{field} contains a lone surrogate (e.g. \\ud800), which is not text: send "
               "valid Unicode (UTF-8)"}]})


async def read_body(scope: Scope, receive: Receive, headers: dict[str, str],
                    settings: Settings) -> tuple[Receive, Response | None]:
    """Read a request body (not an upload's) up to the limit, check it, and return a receive
    that hands the app the same body; or the response that refuses it."""
    if (scope["method"], scope["path"]) in UPLOADS:
        return receive, None
    declared = headers.get("content-length", "")
    if not (declared not in ("", "0") or "transfer-encoding" in headers):
        return receive, None  # no body: nothing to read (a GET, an event stream)
    limit = settings.body_limit_kib * 1024
    if declared.isdigit() and int(declared) > limit:
        return receive, too_large(settings.body_limit_kib)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: let the app see it
            return _replay(b"".join(chunks), receive, message), None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # stop reading: the rest never reaches memory
            return receive, too_large(settings.body_limit_kib)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if _is_json(headers) and SURROGATE_ESCAPE.search(body):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None  # not JSON: the route's own parser says so (a 422)
        where = lone_surrogate_at(parsed)
        if where is not None:
            return receive, bad_text(where)
    return _replay(body, receive), None


def _replay(body: bytes, receive: Receive, then: Message | None = None) -> Receive:
    """A receive that gives the body read already, then (a disconnect) what follows."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then is not None:
            return then
        return await receive()

    return replay


def _fixed(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings and keys made U+FFFD (in place:
    it is fresh from json.loads). For what was stored before the check above existed."""
    if isinstance(value, str):
        return _fixed(value)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            for i, child in enumerate(item):
                if isinstance(child, str):
                    item[i] = _fixed(child)
                else:
                    stack.append(child)
        elif isinstance(item, dict):
            for key in list(item):
                child = item.pop(key)
                if isinstance(child, str):
                    child = _fixed(child)
                else:
                    stack.append(child)
                item[_fixed(key)] = child
    return value


def load_json(text: str | bytes) -> Any:
    """The database's JSON reader: rows written before lone surrogates were refused (job
    params), or events a worker wrote with one, read as U+FFFD, so every page, API answer
    and `prospect jobs` line can still be encoded."""
    value = json.loads(text)
    escape = SURROGATE_ESCAPE if isinstance(text, bytes) else SURROGATE_ESCAPE_TEXT
    return replace_lone_surrogates(value) if escape.search(text) else value
