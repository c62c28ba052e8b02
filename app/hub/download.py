"""Before a hub download starts: the repo's file list and sizes, the files a model needs, free
disk, what is already in the cache (issue 15).

The server talks to the hub's HTTP API with httpx (it never imports huggingface_hub: see
app/hub/cache.py), at $HF_ENDPOINT (default https://huggingface.co), with a short connect
timeout, so an offline machine gets its answer at once. The token is the hub client's own
(HF_TOKEN, else the file `hf auth login` writes); it goes only into the Authorization header
sent to the hub, never into a message, a log line or an answer.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from app.hub.inspect import hub_cache_dir
from app.units import fmt_bytes
from contract.hub_files import NoWeights, pick_files

if TYPE_CHECKING:
    import httpx

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 15.0
CONFIG_MAX_BYTES = 1 << 20
TOKEN_HINT = ("If you have access, put a Hugging Face token where the hub client finds it: "
              "the HF_TOKEN environment variable of the Prospect server, or run "
              "`hf auth login` once (it saves the token in the Hugging Face folder); then "
              "start the download again.")


class HubRefusal(Exception):  # noqa: N818 - an answer, not a bug
    """The download cannot start: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **facts: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.facts = facts


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


def host() -> str:
    return urlsplit(endpoint()).netloc or endpoint()


def hub_token() -> str | None:
    """The token huggingface_hub would send: HF_TOKEN, else its token file."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        home = os.environ.get("HF_HOME") or str(Path(os.environ.get(
            "XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        path = str(Path(home).expanduser() / "token")
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (its nearest existing folder)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass
class RepoFiles:
    repo_id: str
    revision: str
    commit: str
    sizes: dict[str, int]  # every file of the repo
    files: list[str] = field(default_factory=list)  # the ones a model needs

    @property
    def total(self) -> int:
        return sum(self.sizes[f] for f in self.files)


def _client() -> httpx.Client:
    import httpx  # here, not at import: 40 ms of the server's start for a page few open

    headers = {"User-Agent": "prospect"}
    token = hub_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(headers=headers, follow_redirects=True, timeout=httpx.Timeout(
        READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))


def _get(client: httpx.Client, url: str, repo_id: str, **kw: Any) -> httpx.Response:
    import httpx

    try:
        response = client.get(url, **kw)
    except httpx.TimeoutException as exc:
        raise HubRefusal(504, f"the hub at {host()} did not answer in time "
                         f"({type(exc).__name__}); try again, or check the connection") \
            from None
    except httpx.TransportError as exc:
        raise HubRefusal(503, f"cannot reach the hub at {host()} ({_reason(exc)}): this "
                         "machine looks offline, or HF_ENDPOINT points nowhere. Models "
                         "already in the cache keep working; connect, then add the model "
                         "again.") from None
    if response.status_code >= 400:
        raise _refusal(response, repo_id)
    return response


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:200] if text else type(exc).__name__


def _refusal(response: httpx.Response, repo_id: str) -> HubRefusal:
    code = response.headers.get("X-Error-Code", "")
    said = response.headers.get("X-Error-Message", "").strip()[:500]
    status = response.status_code
    if status == 401 and "credentials" in said.lower():  # a token, and a wrong one
        return HubRefusal(403, f"the hub at {host()} refused the token it was sent ({said}): "
                          "it is expired or mistyped. Replace it: the server's HF_TOKEN, or "
                          "`hf auth login` again.")
    if code == "GatedRepo":
        return HubRefusal(403, f"{repo_id} is gated on {host()}: "
                          f"{said or 'you must be granted access'}. Ask for access on its "
                          f"page ({endpoint()}/{repo_id}). {TOKEN_HINT}")
    if code == "RevisionNotFound":
        return HubRefusal(404, f"{repo_id} has no such revision on {host()} ({said or status})"
                          "; use a branch, tag or commit it has (main by default)")
    if code == "RepoNotFound" or status == 404 or (status == 401 and code != "GatedRepo"):
        return HubRefusal(404, f"no model {repo_id} on {host()} (or it is private): check the "
                          f"id's spelling, owner/name as on the model's page. {TOKEN_HINT}")
    if status in (401, 403):
        return HubRefusal(403, f"the hub refused access to {repo_id}: {said or status}. "
                          + TOKEN_HINT)
    return HubRefusal(502, f"the hub at {host()} answered {status} for {repo_id}"
                      f"{': ' + said if said else ''}; try again later")


def repo_files(repo_id: str, revision: str = "main") -> RepoFiles:
    """The repo's files and sizes at ``revision``, and those a model needs; HubRefusal."""
    url = f"{endpoint()}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    with _client() as client:
        response = _get(client, url, repo_id, params={"blobs": "true"})
    try:
        info = response.json()
        commit = str(info["sha"])
        sizes = {str(s["rfilename"]): int(s.get("size") or (s.get("lfs") or {}).get("size")
                                          or 0) for s in info.get("siblings") or []}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HubRefusal(502, f"the hub at {host()} sent a model description Prospect cannot "
                         "read; is HF_ENDPOINT a Hugging Face hub?") from None
    found = RepoFiles(repo_id, revision, commit, sizes)
    try:
        found.files = pick_files(list(sizes))
    except NoWeights as exc:
        raise HubRefusal(422, f"{repo_id}: {exc}") from None
    return found


def fetch_config(repo: RepoFiles) -> dict[str, Any] | None:
    """The repo's config.json (small), for the planner; None when it cannot be read."""
    url = f"{endpoint()}/{repo.repo_id}/resolve/{repo.commit}/config.json"
    try:
        with _client() as client:
            response = _get(client, url, repo.repo_id)
        if len(response.content) > CONFIG_MAX_BYTES:
            return None
        config = json.loads(response.content)
    except (HubRefusal, ValueError):
        return None
    return config if isinstance(config, dict) else None


def repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    return (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def in_cache(repo: RepoFiles, cache: Path | None = None) -> tuple[Path, int, list[str]]:
    """The snapshot folder of the repo's commit, the bytes of the wanted files already
    there, and the files still missing."""
    snapshot = repo_folder(repo.repo_id, cache) / "snapshots" / repo.commit
    here = [f for f in repo.files if (snapshot / f).exists()]
    missing = [f for f in repo.files if f not in here]
    return snapshot, sum(repo.sizes[f] for f in here), missing


def check_space(needed: int, cache: Path | None = None) -> dict[str, Any]:
    """Refuse (409, with the numbers) a download the cache's disk cannot hold."""
    cache = cache or hub_cache_dir()
    free = free_bytes(cache)
    facts = {"needed_bytes": needed, "free_bytes": free, "cache_dir": str(cache)}
    if needed > free:
        raise HubRefusal(409, f"the download needs {fmt_bytes(needed)}, {fmt_bytes(free)} free "
                         f"on the disk of {cache}: free space (Delete from cache on the "
                         "Models page removes models you no longer use), or point "
                         "HF_HUB_CACHE at a larger disk", **facts)
    return facts
