"""Models already on this machine: the local Hugging Face hub cache, read as plain files.

The seed guide lists the cache with ``huggingface_hub.scan_cache_dir``; the server may not
import that (it drags in requests and more), and the layout is simple and documented:
``<cache>/models--<org>--<name>/{blobs,snapshots/<commit>,refs/main}``. Blobs hold the
bytes once (snapshots link to them), so a repo's size on disk is the sum of its blobs.

MLX models are marked: mlx-community's repos, and any config.json with MLX's top-level
``quantization`` block (bits, group_size), which tells a 4-bit from an 8-bit model.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from app.hub.inspect import hub_cache_dir, resolve_model_dir

SCAN_TTL_S = 30.0  # the picker and the models page ask often; a download takes minutes
_lock = threading.Lock()
_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}


def blobs_size(repo: Path) -> int:
    total = 0
    try:
        entries = list(os.scandir(repo / "blobs"))
    except OSError:
        return 0
    for entry in entries:
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def snapshot_dir(repo: Path) -> Path | None:
    """The snapshot refs/main points at, else the newest one holding a config.json."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    try:
        if ref.is_file():
            commit = ref.read_text().strip()
            if (snapshots / commit / "config.json").is_file():
                return snapshots / commit
        found = [d for d in snapshots.iterdir() if (d / "config.json").is_file()]
    except OSError:
        return None
    return max(found, key=lambda d: d.stat().st_mtime) if found else None


def read_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def mlx_facts(repo_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """{"mlx": bool, "bits": int | None} from the repo's owner and its config."""
    quant = config.get("quantization")
    bits = quant.get("bits") if isinstance(quant, dict) else None
    mlx = repo_id.lower().startswith("mlx-community/") or isinstance(quant, dict)
    if bits is None and mlx:
        name = repo_id.lower()
        bits = next((b for b in (2, 3, 4, 5, 6, 8) if f"-{b}bit" in name), None)
    return {"mlx": mlx, "bits": bits if isinstance(bits, int) else None}


def scan(cache_dir: Path) -> list[dict[str, Any]]:
    """Every model repo in the cache that has a usable snapshot, largest first."""
    out = []
    try:
        repos = [p for p in cache_dir.iterdir() if p.name.startswith("models--") and p.is_dir()]
    except OSError:
        return []
    for repo in repos:
        repo_id = repo.name[len("models--"):].replace("--", "/", 1)
        snap = snapshot_dir(repo)
        if snap is None:
            continue  # a download that never finished, or a tokenizer-only repo
        config = read_config(snap)
        out.append({"id": repo_id, "path": str(snap), "size_bytes": blobs_size(repo),
                    "model_type": config.get("model_type"),
                    "architectures": config.get("architectures") or [],
                    **mlx_facts(repo_id, config)})
    out.sort(key=lambda m: (-m["size_bytes"], m["id"]))
    return out


def cached_models(env: dict[str, str] | None = None, fresh: bool = False) -> list[dict]:
    """The hub cache's models (see ``scan``), rescanned at most every SCAN_TTL_S seconds."""
    cache_dir = hub_cache_dir(env)
    key = str(cache_dir)
    with _lock:
        hit = _cache.get(key)
        if hit and not fresh and time.monotonic() - hit[0] < SCAN_TTL_S:
            return hit[1]
    found = scan(cache_dir)
    with _lock:
        _cache[key] = (time.monotonic(), found)
    return found


def label(model: dict[str, Any]) -> str:
    """'mlx · 4-bit' / 'mlx' / '' for the picker and the models page."""
    if not model.get("mlx"):
        return ""
    return f"mlx · {model['bits']}-bit" if model.get("bits") else "mlx"


# --- is a hub id here, or can a worker get it now? ------------------------------------------
OFF_WORDS = ("1", "true", "yes", "on")


def downloads_allowed(allow_downloads: bool, env: dict[str, str] | None = None) -> bool:
    """Whether a worker may fetch an uncached hub id now: PROSPECT_ALLOW_DOWNLOADS on, and
    the server not told to stay offline (HF_HUB_OFFLINE)."""
    env = os.environ if env is None else env
    return allow_downloads and env.get("HF_HUB_OFFLINE", "").strip().lower() not in OFF_WORDS


def download_command(repo_id: str) -> str:
    return f"hf download {repo_id}"


def missing_model(repo_id: str, env: dict[str, str] | None = None) -> dict[str, str] | None:
    """None when hub id ``repo_id`` has a usable snapshot in the cache; else what to do."""
    if resolve_model_dir(repo_id, env) is not None:
        return None
    return {"model": repo_id, "command": download_command(repo_id),
            "cache_dir": str(hub_cache_dir(env))}


def missing_message(repo_id: str, env: dict[str, str] | None = None) -> str:
    return (f"{repo_id} is not on this machine (not in the Hugging Face cache at "
            f"{hub_cache_dir(env)}) and workers do not download models (PROSPECT_ALLOW_DOWNLOADS"
            f" is off, or HF_HUB_OFFLINE is set). Get it with `{download_command(repo_id)}` in "
            "a terminal, then start again")
