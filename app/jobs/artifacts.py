"""A job's artifacts (adapter, checkpoints, fused model) and their download as a zip.

The list comes from the stored events (``artifact`` and ``checkpoint``), so it survives the
worker; a folder deleted since is listed as missing. A download streams a zip of one folder
inside the job's run folder: the path is relative to it and may not leave it (``..``, an
absolute path or a symlink pointing out are refused), so this is no general file server.
The zip is written as it is sent (stored, not compressed: safetensors do not shrink), so a
multi-GB fused model needs neither memory nor a temporary copy on disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException
from sqlmodel import Session, select

from app.models import Event, Job
from app.paths import check_path_text

CHUNK = 1024 * 1024


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walk
                total += (Path(root) / name).lstat().st_size
    return total


def run_root(job: Job) -> Path | None:
    return Path(job.run_dir).resolve() if job.run_dir else None


def relative(job: Job, path: str) -> str | None:
    """``path`` relative to the job's run folder, or None when it lies outside it."""
    root = run_root(job)
    if root is None:
        return None
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def list_artifacts(session: Session, job: Job) -> list[dict[str, Any]]:
    """[{kind, path, rel, step, exists, size_bytes, download}] newest checkpoint last."""
    found: dict[str, dict[str, Any]] = {}
    rows = session.exec(select(Event.type, Event.data).where(
        Event.job_id == job.id, Event.type.in_(("artifact", "checkpoint"))).order_by(Event.seq))
    for etype, data in rows:
        path = str(data.get("path") or "")
        if not path:
            continue
        kind = "checkpoint" if etype == "checkpoint" else str(data.get("kind") or "artifact")
        found[path] = {"kind": kind, "path": path, "step": data.get("step")}
    if job.adapter_path and job.adapter_path not in found:
        found[job.adapter_path] = {"kind": "adapter", "path": job.adapter_path, "step": None}
    out = []
    for item in found.values():
        p = Path(item["path"])
        exists = p.is_dir() or p.is_file()
        rel = relative(job, item["path"])
        out.append({**item, "rel": rel, "exists": exists,
                    "size_bytes": (folder_size(p) if p.is_dir() else p.stat().st_size)
                    if exists else None,
                    "download": f"/api/jobs/{job.id}/artifacts/download?path={quote(rel)}"
                    if exists and rel is not None else None})
    order = {"adapter": 0, "fused_model": 1, "checkpoint": 2}
    out.sort(key=lambda a: (order.get(a["kind"], 3), a["step"] or 0))
    return out


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then writes data descriptors and never seeks
    back, so what it wrote can be sent at once and forgotten."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def zip_files(base: Path, files: list[Path]) -> Iterator[bytes]:
    """Zip ``files`` under names relative to ``base``, yielding bytes as they are written."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            info = zipfile.ZipInfo.from_file(f, f.relative_to(base).as_posix())
            with open(f, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while block := src.read(CHUNK):
                    dst.write(block)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def confined(job: Job, rel: str) -> Path:
    """The folder or file ``rel`` names inside the job's run folder, or a 4xx saying why."""
    root = run_root(job)
    if root is None or not root.is_dir():
        raise HTTPException(404, f"job {job.id} has no run folder on disk")
    check_path_text(rel, "path")  # a NUL or an over-long name: a 422, never a 500
    if not rel or Path(rel).is_absolute() or "\x00" in rel:
        raise HTTPException(400, "path must be relative to the job's run folder, e.g. "
                            "'adapter' (see GET /api/jobs/{id}/artifacts)")
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise HTTPException(400, f"path {rel!r} leads outside job {job.id}'s run folder; "
                            "give a path inside it, as listed by /artifacts")
    if not target.exists():
        raise HTTPException(404, f"{rel!r} does not exist in job {job.id}'s run folder "
                            "(deleted?); see GET /api/jobs/{id}/artifacts")
    return target
