"""Which process of a distributed run this one is, and, when the run fails, which process
failed first. Generic for both backends (workers/runtime.py uses it); plain Python.

Each backend's launcher says a process's place in the environment: torchrun (under
``accelerate launch``) sets RANK / WORLD_SIZE / LOCAL_RANK; ``mlx.launch`` sets MLX_RANK and
hands the ring's addresses in the JSON file MLX_HOSTFILE (one list per rank), jaccl its RDMA
devices in MLX_IBV_DEVICES (one row per rank).

Blame: when one process of a run fails, the others fail soon after with a communication error
(gloo's "Connection closed by peer", NCCL's watchdog) or are stopped by the launcher. Rank 0
alone writes events, so before it reports its own error or a cancel it reads the ranks/ files
(contract/ranks.py): a process that died without a word, or one that failed of something other
than communication, is the cause; rank 0's own error is only a consequence when it is a
communication error or a stop.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import psutil

from contract.ranks import (
    COMMUNICATION_MARKERS,
    RankInfo,
    communication_failure,
    first_failure,
    read_ranks,
)


class World(NamedTuple):
    """(rank, world size, local rank): this process's place in its run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ONE_PROCESS = World()


def single() -> World:
    return ONE_PROCESS


def torch_world(env: dict[str, str] | None = None) -> World:
    """torchrun's variables; one process when they are absent."""
    env = os.environ if env is None else env
    return World(rank=int(env.get("RANK", "0") or 0),
                 size=int(env.get("WORLD_SIZE", "1") or 1),
                 local_rank=int(env.get("LOCAL_RANK", "0") or 0))


def mlx_world(env: dict[str, str] | None = None) -> World:
    """mlx.launch's variables: MLX_RANK, and the world's size from the ring's hostfile (a JSON
    list with one entry per rank), jaccl's device matrix, or MLX_WORLD_SIZE (nccl). One rank
    per host, so the local rank is always 0."""
    env = os.environ if env is None else env
    rank = int(env.get("MLX_RANK", "0") or 0)
    size = 1
    if env.get("MLX_WORLD_SIZE"):
        size = int(env["MLX_WORLD_SIZE"])
    for name in ("MLX_HOSTFILE", "MLX_IBV_DEVICES"):
        path = env.get(name)
        if path:
            try:
                entries = json.loads(Path(path).read_text(encoding="utf-8") or "[]")
            except (OSError, ValueError):
                continue
            if isinstance(entries, list) and entries:
                size = len(entries)
                break
    return World(rank=rank, size=max(size, rank + 1), local_rank=0)


def started_at() -> float:
    """This process's start time as psutil reports it (ranks/<r>.json's started_at)."""
    return psutil.Process().create_time()


def alive(info: RankInfo) -> bool:
    """Whether a rank's process still runs. One on another host cannot be seen from here and
    counts as alive; a zombie (killed, not yet reaped by its launcher) is dead; a PID reused
    by another process (another start time) is dead."""
    if info.host != socket.gethostname():
        return True
    try:
        process = psutil.Process(info.pid)
        if abs(process.create_time() - info.started_at) > 1.0:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):  # ValueError: a PID psutil refuses (0, negative)
        return False


def is_communication_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    text = f"{type(exc).__name__}: {exc}".lower()
    return type(exc).__name__.startswith("Dist") or any(m in text for m in COMMUNICATION_MARKERS)


def culprit(run_dir: Path, me: int, own_error: BaseException | None, *,
            is_alive: Callable[[RankInfo], bool] = alive, wait_s: float = 5.0,
            poll_s: float = 0.1) -> RankInfo | None:
    """The other rank whose failure ended the run, or None when this rank's own error (or
    cancel) stands. ``own_error``: what this rank failed of (None: it was cancelled, or
    stopped before training). A communication error, or a cancel, is this rank's own only
    when no other rank failed; the others are blamed in first_failure's order (the earliest
    error of a rank's own, else one that died without a word, else the earliest "peer lost"
    error). After a communication error a peer that still runs without an end file is given
    up to ``wait_s`` to write it (it may be unwinding its own error, which comes first).
    Any other error of this rank is the cause unless a peer had failed of its own before."""
    communication = is_communication_error(own_error)
    consequence = own_error is None or communication
    failed_at = time.time()
    # A cancel waits for nobody: a launcher stops the others when one died or failed, and
    # that one's end file (or its death) is there already.
    deadline = time.monotonic() + (wait_s if communication else 0.0)
    while True:
        ranks = [r for r in read_ranks(run_dir) if r.rank != me]
        found = first_failure(ranks, is_alive)
        own = found is not None and found.status == "failed" and not communication_failure(found)
        if not consequence:
            return found if own and (found.ended_at or 0.0) <= failed_at else None
        undecided = [r for r in ranks if r.status is None and is_alive(r)]
        if own or not undecided or time.monotonic() >= deadline:
            return found
        time.sleep(poll_s)
