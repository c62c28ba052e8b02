"""A rank of a distributed run whose peer died mid-collective can wait forever: MLX's ring
logged "Socket 4 was closed by the peer" and kept waiting; NCCL waits for its timeout; a
SIGTERM from the launcher then only sets the stop flag, which the stuck main thread never
reads, and mlx.launch waits on that rank for ever (seen in a test: a rank killed between two
steps hung the job). This thread watches the other ranks of this machine (their ranks/ files
and PIDs); once one has been dead for ``grace`` seconds while this rank is still running,
it ends the run itself: rank 0 writes the dead rank's error and ``done`` failed, every rank
its end file, and the process exits at once. A main thread that fails the normal way (a
communication error, then the blame in workers/runtime.py) finishes well before the grace.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.ranks import failure_event, first_failure, read_ranks, write_rank_end
from workers.world import World, alive

GRACE_S = 15.0


class Ending:
    """Who writes the run's last events: the main thread (runtime.finish) or the watch,
    whichever comes first; the other then writes nothing."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: int | None = None

    @property
    def ended(self) -> bool:
        return self._owner is not None

    def claim(self) -> bool:
        """True for the first thread to ask, and again for that thread."""
        with self._lock:
            if self._owner is None:
                self._owner = threading.get_ident()
            return self._owner == threading.get_ident()


class PeerWatch:
    def __init__(self, world: World, folder: Path, emit: Callable[..., Any],
                 ending: Ending, close: Callable[[], None], grace: float = GRACE_S,
                 interval: float = 1.0, exit: Callable[[int], None] = os._exit):
        self.world, self.folder, self.emit, self.ending = world, folder, emit, ending
        self.close, self.grace, self.interval, self.exit = close, grace, interval, exit
        self._thread: threading.Thread | None = None

    def start(self) -> PeerWatch:
        self._thread = threading.Thread(target=self._run, name="peer-watch", daemon=True)
        self._thread.start()
        return self

    def dead_peer(self):
        """The peer that failed first, if its process is gone (one still running is not
        blocking anybody yet)."""
        info = first_failure(read_ranks(self.folder), alive, exclude=self.world.rank)
        return info if info is not None and not alive(info) else None

    def _run(self) -> None:
        dead_since: float | None = None
        while not self.ending.ended:
            time.sleep(self.interval)
            info = self.dead_peer()
            if info is None:
                dead_since = None
                continue
            dead_since = dead_since or time.monotonic()
            if time.monotonic() - dead_since >= self.grace:
                self.give_up(info)
                return

    def give_up(self, info) -> None:
        if not self.ending.claim():  # the main thread is already writing the end
            return
        said = (f"rank {info.rank} is gone and rank {self.world.rank} was still waiting on it "
                f"{self.grace:g} s later")
        print(f"{said}: ending the run", flush=True)
        # this rank's own end: a consequence ("distributed"), never taken for the cause
        write_rank_end(self.folder, self.world.rank, "failed", {
            "error_type": "distributed", "message": said,
            "hint": f"rank {info.rank} failed first: see its lines in worker.log"})
        if self.world.rank == 0:
            self.emit("error", **failure_event(info))
            self.emit("done", status="failed", summary={})
        self.close()
        self.exit(1)
