"""What GETs on a dataset leave on disk (MLX exports, token length tables): made once however
many identical requests arrive together, written under a unique name and renamed into place
whole, and bounded (PROSPECT_EXPORT_CACHE_ENTRIES, PROSPECT_TOKEN_CACHE_ENTRIES): the least
recently used entry goes first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from app.config import Settings

log = logging.getLogger("prospect")
_guard = threading.Lock()
_locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, threads holding or waiting)


@contextlib.contextmanager
def single_flight(key: str) -> Iterator[None]:
    """One thread at a time per key: the first makes the entry, the others wait and then
    find it made. The table forgets a key when no thread needs it (seeds are unbounded)."""
    with _guard:
        lock, users = _locks.get(key, (threading.Lock(), 0))
        _locks[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _guard:
            lock, users = _locks[key]
            if users == 1:
                del _locks[key]
            else:
                _locks[key] = (lock, users - 1)


def touch(path: Path) -> None:
    """Mark an entry as just used (eviction goes by modification time)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def evict(settings: Settings, pattern: str, keep: int, spare: Path) -> list[Path]:
    """Remove the least recently used entries matching datasets/*/<pattern> beyond ``keep``,
    never ``spare`` (the one just made). Returns what was removed."""
    def used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    entries = sorted(settings.datasets_dir.glob(f"*/{pattern}"), key=used, reverse=True)
    removed = []
    for entry in [e for e in entries if e != spare][max(keep - 1, 0):]:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    if removed:
        log.info("dataset cache: removed %d least recently used %s", len(removed), pattern)
    return removed
