"""What each process of a distributed run leaves in ``<run_dir>/ranks/``: who it is, and how
it ended. Rank 0 alone writes events.jsonl; these small files let rank 0 (and the server, when
every process is gone) say which rank failed first and why, and let the server find every
rank's PID so that none is left running after the launcher ends.

    ranks/<r>.json      {rank, world_size, local_rank, host, pid, started_at}   at start
    ranks/<r>.end.json  {rank, status, error?: {error_type, message, hint}, t}   at the end

A rank that started and has no end file but whose process is gone died without a word
(SIGKILL, the kernel's OOM killer): that is a failure too. The launcher wrapper
(workers/launch.py) empties the folder before each launch, so a resume starts clean.
Plain Python: both the server and the workers import it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RANKS_DIR = "ranks"


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    host: str
    pid: int
    started_at: float  # unix time the process started (psutil's create_time)
    status: str | None = None  # from the end file: succeeded | cancelled | failed; None: none
    error: dict[str, Any] | None = None
    ended_at: float | None = None


def ranks_dir(run_dir: Path) -> Path:
    return Path(run_dir) / RANKS_DIR


def clear_ranks(run_dir: Path) -> None:
    shutil.rmtree(ranks_dir(run_dir), ignore_errors=True)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    os.replace(tmp, path)  # whole or absent: a reader never sees half a file


def write_rank_start(run_dir: Path, rank: int, world_size: int, local_rank: int,
                     started_at: float) -> None:
    _write_json(ranks_dir(run_dir) / f"{rank}.json", {
        "rank": rank, "world_size": world_size, "local_rank": local_rank,
        "host": socket.gethostname(), "pid": os.getpid(), "started_at": started_at})


def write_rank_end(run_dir: Path, rank: int, status: str,
                   error: dict[str, Any] | None = None) -> None:
    _write_json(ranks_dir(run_dir) / f"{rank}.end.json",
                {"rank": rank, "status": status, "error": error, "t": time.time()})


def _int(value: Any, least: int) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
    return value if ok else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _error_fields(error: Any) -> dict[str, str] | None:
    """An end file's error as {error_type?, message?, hint?} of strings, whatever was there:
    a bare string is the message; anything else that is not a dict is no error at all."""
    if isinstance(error, str):
        return {"message": error}
    if not isinstance(error, dict):
        return None
    return {k: error[k] for k in ("error_type", "message", "hint")
            if isinstance(error.get(k), str)}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _rank_info(path: Path) -> RankInfo | None:
    """One rank from its files; None when its start file is not what a rank writes (a torn
    or hand-made file must not make the server or a rank fail in its turn). A bad end file
    counts as none: whether the process still runs then decides."""
    try:
        start = _read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(start, dict):
        return None
    rank, pid = _int(start.get("rank"), 0), _int(start.get("pid"), 1)
    world_size, started_at = _int(start.get("world_size"), 1), _number(start.get("started_at"))
    if rank is None or pid is None or world_size is None or started_at is None:
        return None
    end_path = path.with_name(f"{rank}.end.json")
    try:
        end = _read_json(end_path) if end_path.is_file() else {}
    except (OSError, ValueError):
        end = {}
    end = end if isinstance(end, dict) else {}
    status = end.get("status")
    host = start.get("host")
    return RankInfo(
        rank=rank, world_size=world_size, local_rank=_int(start.get("local_rank"), 0) or 0,
        host=host if isinstance(host, str) else "", pid=pid, started_at=started_at,
        status=status if isinstance(status, str) else None,
        error=_error_fields(end.get("error")), ended_at=_number(end.get("t")))


def read_ranks(run_dir: Path) -> list[RankInfo]:
    """Every rank that wrote its start file, by rank; unreadable or malformed files are
    skipped, malformed fields of an end file dropped."""
    folder = ranks_dir(run_dir)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    out = [_rank_info(p) for p in paths if not p.name.endswith(".end.json")]
    return sorted((r for r in out if r is not None), key=lambda r: r.rank)


# What a process sees when a peer of the run is gone or stopped answering: torch.distributed
# (gloo, NCCL, the TCP store) and MLX's ring all say it in these words.
COMMUNICATION_MARKERS = (
    "connection closed by peer", "connection reset", "broken pipe", "connection refused",
    "socket timeout", "timed out", "nccl", "gloo", "distbackenderror", "distnetworkerror",
    "processgroup", "[ring]",
)


def communication_failure(info: RankInfo) -> bool:
    """Whether the rank's recorded error is only a peer gone (a consequence, not a cause)."""
    error = _error_fields(info.error) or {}
    text = f"{error.get('error_type', '')}: {error.get('message', '')}".lower()
    return error.get("error_type") == "distributed" or \
        any(m in text for m in COMMUNICATION_MARKERS)


def first_failure(ranks: list[RankInfo], alive: Callable[[RankInfo], bool],
                  exclude: int | None = None) -> RankInfo | None:
    """The rank whose failure ended the run: the earliest that ended with an error of its
    own, else one that is gone without an end file (``alive`` says whether a rank's process
    still runs; a rank on another host it cannot see counts as alive), else the earliest
    that failed of a peer gone (every failure a communication error). A rank that died
    without a word comes before the others' "connection lost" errors, which it caused.
    ``exclude``: the asking rank."""
    others = [r for r in ranks if r.rank != exclude]
    failed = sorted((r for r in others if r.status == "failed"),
                    key=lambda r: r.ended_at or 0.0)
    own = [r for r in failed if not communication_failure(r)]
    dead = [r for r in others if r.status is None and not alive(r)]
    return next(iter(own or dead or failed), None)


def failure_event(info: RankInfo) -> dict[str, Any]:
    """The fields of the run's ``error`` event for the rank that failed first."""
    where = f"rank {info.rank} of {info.world_size} (pid {info.pid} on {info.host})"
    error = _error_fields(info.error)
    if error is not None or info.status is not None:  # it wrote an end file: no silent death
        error = error or {}
        said = error.get("message") or "its end file gives no reason"
        return {"error_type": error.get("error_type") or "rank_failed",
                "message": f"{where} failed: {said}",
                "hint": error.get("hint") or "worker.log has that rank's traceback.",
                "rank": info.rank}
    return {"error_type": "rank_died",
            "message": f"{where} ended without a word: killed by a signal (SIGKILL, or the "
                       "system's out-of-memory killer)",
            "hint": "Look at the end of worker.log and the system log for what killed it; "
                    "if it was memory, lower per_device_train_batch_size or turn on "
                    "gradient_checkpointing, then resume the job.",
            "rank": info.rank}
