"""A Hugging Face hub cache on disk, in the real layout (blobs, snapshots linking to them,
refs/main), made from the demo model's files: one transformers repo and one mlx-community
4-bit repo (its config carries MLX's quantization block)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def add_repo(cache: Path, repo_id: str, model_dir: Path, extra_config: dict | None = None,
             commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(model_dir.iterdir()):
        data = f.read_bytes()
        if f.name == "config.json" and extra_config:
            data = json.dumps({**json.loads(data), **extra_config}).encode()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snap), link)
    return snap


def make_cache(cache: Path, model_dir: Path) -> Path:
    add_repo(cache, "acme/tiny-chat", model_dir)
    add_repo(cache, "mlx-community/tiny-chat-4bit", model_dir,
             {"quantization": {"group_size": 64, "bits": 4}})
    (cache / "models--half--downloaded" / "blobs").mkdir(parents=True)  # no snapshot: skipped
    (cache / "datasets--acme--rows").mkdir(parents=True)  # a dataset: not a model
    return cache
