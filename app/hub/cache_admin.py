"""The Hugging Face cache as huggingface_hub reports it, and deleting a repo from it.

``huggingface_hub.scan_cache_dir`` gives each repo's size on disk, files and revisions (the
seed guide's way of listing the cache); ``HFCacheInfo.delete_revisions(...).execute()``
removes revisions, and the whole repo folder with its last one. The server avoids importing
huggingface_hub at start-up (app/hub/cache.py says why), so it is imported here, inside the
functions, on the first look at the cache.

A repo folder the scan cannot read (a download that never wrote a snapshot, a cancelled
one) is listed as ``incomplete`` with the bytes its blobs hold, so it can be deleted too.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.hub.cache import blobs_size, cached_models
from app.hub.inspect import hub_cache_dir

REPO_PREFIX = {"model": "models--", "dataset": "datasets--", "space": "spaces--"}


class CacheRepoNotFound(LookupError):
    """No such model repo in the cache."""


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def repo_folder(cache_dir: Path, repo_id: str, repo_type: str = "model") -> Path:
    return cache_dir / (REPO_PREFIX[repo_type] + repo_id.replace("/", "--"))


def _repo_row(repo: Any) -> dict[str, Any]:
    revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
    return {
        "repo_id": repo.repo_id, "repo_type": repo.repo_type, "path": str(repo.repo_path),
        "size_on_disk": repo.size_on_disk, "nb_files": repo.nb_files, "complete": True,
        "last_accessed": _when(repo.last_accessed), "last_modified": _when(repo.last_modified),
        "refs": sorted(ref for r in revisions for ref in r.refs),
        "revisions": [{"commit": r.commit_hash, "refs": sorted(r.refs),
                       "size_on_disk": r.size_on_disk, "nb_files": r.nb_files,
                       "snapshot_path": str(r.snapshot_path),
                       "last_modified": _when(r.last_modified)} for r in revisions],
    }


def _incomplete_rows(cache_dir: Path, known: set[str]) -> list[dict[str, Any]]:
    """Model repo folders the scan skipped: no snapshot yet (a download under way or
    stopped early). Their blobs (and *.incomplete parts) are what they hold."""
    try:
        folders = [p for p in cache_dir.iterdir()
                   if p.is_dir() and p.name.startswith("models--") and p.name not in known]
    except OSError:
        return []
    rows = []
    for folder in folders:
        repo_id = folder.name[len("models--"):].replace("--", "/", 1)
        rows.append({"repo_id": repo_id, "repo_type": "model", "path": str(folder),
                     "size_on_disk": blobs_size(folder), "nb_files": None, "complete": False,
                     "last_accessed": None, "last_modified": _when(folder.stat().st_mtime),
                     "refs": [], "revisions": []})
    return rows


def _scan(cache_dir: Path):
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(cache_dir)
    except CacheNotFound:
        return None


def cache_info(env: dict[str, str] | None = None) -> dict[str, Any]:
    """{cache_dir, total_bytes, repos (largest first), warnings}: every repo type, each with
    its revisions; incomplete model folders included (``complete`` false)."""
    cache_dir = hub_cache_dir(env)
    info = _scan(cache_dir)
    repos = [_repo_row(r) for r in info.repos] if info is not None else []
    known = {Path(r["path"]).name for r in repos}
    repos += _incomplete_rows(cache_dir, known)
    repos.sort(key=lambda r: (-r["size_on_disk"], r["repo_id"]))
    warnings = [str(w) for w in info.warnings] if info is not None else []
    return {"cache_dir": str(cache_dir), "total_bytes": sum(r["size_on_disk"] for r in repos),
            "repos": repos, "warnings": warnings}


def delete_repo(repo_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Remove model repo ``repo_id`` (all its revisions and blobs) from the cache; return
    what went: {repo_id, freed_bytes, revisions}. CacheRepoNotFound when it is not there."""
    cache_dir = hub_cache_dir(env)
    folder = repo_folder(cache_dir, repo_id)
    info = _scan(cache_dir)
    repo = next((r for r in (info.repos if info is not None else ())
                 if r.repo_type == "model" and r.repo_id == repo_id), None)
    if repo is not None:
        commits = [r.commit_hash for r in repo.revisions]
        strategy = info.delete_revisions(*commits)
        freed = strategy.expected_freed_size
        strategy.execute()
        if folder.is_dir():  # execute() leaves a repo with no revision in place
            shutil.rmtree(folder, ignore_errors=True)
    elif folder.is_dir() and folder.parent == cache_dir:
        commits, freed = [], blobs_size(folder)
        shutil.rmtree(folder, ignore_errors=True)
    else:
        raise CacheRepoNotFound(repo_id)
    cached_models(env, fresh=True)  # the picker's view of the cache, rescanned now
    return {"repo_id": repo_id, "freed_bytes": freed, "revisions": commits}
