"""A failed download's ``error`` event: what the hub said, and what to do about it.

Recognised by class name (the hub client's classes, httpx2's), so this module imports neither.
A token is never in these messages: the hub client does not put it in its errors, and the
hints say where a token goes, not what it is.
"""

from __future__ import annotations

import errno
import os
from typing import Any
from urllib.parse import urlsplit

from workers import runtime

TOKEN_HINT = ("If you have access, put a Hugging Face token where the hub client finds it: "
              "the HF_TOKEN environment variable of the server, or `hf auth login` (it saves "
              "the token in the Hugging Face folder); then start the download again.")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def host() -> str:
    return urlsplit(endpoint()).netloc or endpoint()


class DownloadStalled(RuntimeError):
    """The hub sent nothing for longer than the timeout, every retry."""


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _hub_message(exc: BaseException) -> str:
    """The hub's own words (X-Error-Message), else the exception's last line."""
    response = getattr(exc, "response", None)
    said = response.headers.get("X-Error-Message") if response is not None else None
    if said:
        return said
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def describe_error(exc: BaseException, raw: dict) -> dict[str, Any]:
    names = _names(exc)
    repo = raw.get("model") or "the model"
    cause = exc.__cause__ or exc.__context__
    if "GatedRepoError" in names:
        return _error("gated_repo", f"{repo} is gated on {host()}: {_hub_message(exc)}",
                      TOKEN_HINT + f" Ask for access on the model's page first ({endpoint()}/"
                      f"{repo}).")
    if "RevisionNotFoundError" in names:
        return _error("revision_not_found", f"{repo} has no revision "
                      f"{raw.get('params', {}).get('revision')!r} on {host()}",
                      "Use a branch, tag or commit the repo has (main by default).")
    if "RepositoryNotFoundError" in names:
        return _error("repo_not_found", f"no model {repo} on {host()} (or it is private)",
                      "Check the id's spelling (owner/name, as on the model's page). "
                      + TOKEN_HINT)
    if isinstance(exc, DownloadStalled) or "TimeoutException" in names or (
            cause is not None and "TimeoutException" in _names(cause)):
        return _error("hub_timeout", f"the hub at {host()} stopped sending: {exc}",
                      "Check the connection and resume the job: the files that finished "
                      "are kept in the cache, only the rest is fetched again.")
    if "ConnectError" in names or "OfflineModeIsEnabled" in names or (
            cause is not None and "ConnectError" in _names(cause)):
        return _error("hub_unreachable", f"cannot reach the hub at {host()}: {exc}",
                      "This machine looks offline (or HF_ENDPOINT points nowhere). Models "
                      "already in the cache keep working; connect, then resume the job.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return _error("disk_full", str(exc), "The disk of the Hugging Face cache is full: "
                      "free space (Delete from cache on the Models page), then resume.")
    if "HfHubHTTPError" in names:
        return _error("hub_error", f"{host()} answered: {_hub_message(exc)}",
                      "Retry later (resume the job); the files that finished are kept.")
    return runtime.describe_error(exc)


def _error(error_type: str, message: str, hint: str) -> dict[str, Any]:
    return {"error_type": error_type, "message": message, "hint": hint}
