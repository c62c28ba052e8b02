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


def read_ranks(run_dir: Path) -> list[RankInfo]:
    """Every rank that wrote its start file, by rank; unreadable files are skipped."""
    out = []
    folder = ranks_dir(run_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name.endswith(".end.json"):
            continue
        try:
            start = json.loads(path.read_text(encoding="utf-8"))
            end_path = path.with_name(f"{start['rank']}.end.json")
            end = json.loads(end_path.read_text(encoding="utf-8")) if end_path.is_file() else {}
            out.append(RankInfo(
                rank=int(start["rank"]), world_size=int(start["world_size"]),
                local_rank=int(start.get("local_rank", 0)), host=str(start.get("host", "")),
                pid=int(start["pid"]), started_at=float(start["started_at"]),
                status=end.get("status"), error=end.get("error"), ended_at=end.get("t")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda r: r.rank)


# What a process sees when a peer of the run is gone or stopped answering: torch.distributed
# (gloo, NCCL, the TCP store) and MLX's ring all say it in these words.
COMMUNICATION_MARKERS = (
    "connection closed by peer", "connection reset", "broken pipe", "connection refused",
    "socket timeout", "timed out", "nccl", "gloo", "distbackenderror", "distnetworkerror",
    "processgroup", "[ring]",
)


def communication_failure(info: RankInfo) -> bool:
    """Whether the rank's recorded error is only a peer gone (a consequence, not a cause)."""
    error = info.error or {}
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
    if info.error:
        return {"error_type": info.error.get("error_type", "rank_failed"),
                "message": f"{where} failed: {info.error.get('message', '')}",
                "hint": info.error.get("hint") or "worker.log has that rank's traceback.",
                "rank": info.rank}
    return {"error_type": "rank_died",
            "message": f"{where} ended without a word: killed by a signal (SIGKILL, or the "
                       "system's out-of-memory killer)",
            "hint": "Look at the end of worker.log and the system log for what killed it; "
                    "if it was memory, lower per_device_train_batch_size or turn on "
                    "gradient_checkpointing, then resume the job.",
            "rank": info.rank}
