"""One server per PROSPECT_HOME: an OS lock on ``<home>/server.lock``.

Two servers on one home would both supervise its queue: the same job launched twice, two
`done` events, two workers at once past MAX_CONCURRENT_JOBS. The lock is flock(2): the
kernel drops it when the process ends however it ends (kill -9 included), so a crash never
leaves a stale lock behind, and the file only says who holds it, for the message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: not a supported platform for the server; no lock there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "server.lock"


class HomeInUse(RuntimeError):
    """Another live server holds this home."""


class ServerLock:
    def __init__(self, home: Path, fd: int):
        self.home, self._fd = home, fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


def acquire(home: Path, host: str, port: int) -> ServerLock:
    """Take the home's lock or raise HomeInUse naming the holder's PID and address."""
    path = Path(home) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by workers (PEP 446)
    if fcntl is None:
        return ServerLock(home, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read(fd)
        os.close(fd)
        raise HomeInUse(
            f"another Prospect server (pid {holder.get('pid', '?')}, "
            f"http://{holder.get('host', '127.0.0.1')}:{holder.get('port', '?')}) is using "
            f"{home}. Use that one, stop it first, or give this one another home with "
            "PROSPECT_HOME=<folder>.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host, "port": port}).encode(), 0)
    return ServerLock(home, fd)


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hold_home(home: Path, host: str, port: int) -> ServerLock:
    """acquire(), for a server's start: another holder ends the start with its message."""
    try:
        return acquire(home, host, port)
    except HomeInUse as exc:
        raise SystemExit(f"error: {exc}") from None
