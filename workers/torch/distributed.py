"""What the torch worker does differently when it is one of several processes (``accelerate
launch``, DDP or FSDP): agree on a stop, and gather every rank's memory for rank 0's events.

A cancel reaches every process (torchrun forwards SIGTERM to each), but not at the same step:
if one rank left the loop and the others went on, the others would wait forever in the next
step's gradient all-reduce. So at each optimizer step end every rank shares its stop flag in
one tiny all_gather, and all of them stop at the first step where any asked. The same gather
carries each rank's memory (active, peak and reserved bytes on CUDA; the process's RSS on the
CPU), which rank 0 hands to its MemorySampler as ``backend.ranks``. A single process never
gets here: no collective, nothing changed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
from transformers import TrainerCallback

from contract.ranks import read_ranks
from workers.memory import MemorySampler
from workers.world import World

NONE = -1  # a number the rank does not have (the CPU has no reserved pool)


class RankSync(TrainerCallback):
    """Place it before the EventCallback, whose ``stop_requested`` is this object: at each
    step end it first agrees with the other ranks whether to stop."""

    def __init__(self, stop_requested, world: World, sampler: MemorySampler, run_dir: Path):
        self.stop_requested = stop_requested
        self.world = world
        self.sampler = sampler
        self.run_dir = Path(run_dir)
        self.agreed = False
        self._cpu_peak = 0
        self._hosts: dict[int, str] | None = None

    def __call__(self) -> bool:
        return self.agreed

    @staticmethod
    def _device(training: torch.device) -> torch.device:
        # NCCL moves CUDA tensors only; gloo works on CPU tensors. Under FSDP accelerate may
        # start both ("cuda:nccl,cpu:gloo"), which picks by the tensor's device.
        if "nccl" in str(dist.get_backend()) and training.type == "cuda":
            return training
        return torch.device("cpu")

    def _memory(self, training: torch.device) -> list[int]:
        """The numbers of the device this rank trains on (not the collective's)."""
        if training.type == "cuda":
            return [torch.cuda.memory_allocated(training),
                    torch.cuda.max_memory_allocated(training),
                    torch.cuda.memory_reserved(training)]
        rss = psutil.Process().memory_info().rss
        self._cpu_peak = max(self._cpu_peak, rss)
        return [rss, self._cpu_peak, NONE]

    def on_step_end(self, args, state, control, **kwargs):
        if not (dist.is_available() and dist.is_initialized()):
            self.agreed = self.agreed or bool(self.stop_requested())
            return
        training = torch.device(args.device)
        device = self._device(training)
        mine = torch.tensor([int(bool(self.stop_requested())), *self._memory(training)],
                            dtype=torch.int64, device=device)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        rows = [t.tolist() for t in gathered]
        self.agreed = self.agreed or any(row[0] for row in rows)
        if self.world.rank == 0:
            self.sampler.ranks = self._ranks(rows)

    def _ranks(self, rows: list[list[int]]) -> list[dict[str, Any]]:
        if self._hosts is None:  # every rank wrote ranks/<r>.json before training began
            self._hosts = {r.rank: r.host for r in read_ranks(self.run_dir)}
        here = socket.gethostname()
        return [{"rank": rank, "host": self._hosts.get(rank, here),
                 "active_bytes": _known(row[1]), "peak_bytes": _known(row[2]),
                 "driver_bytes": _known(row[3])} for rank, row in enumerate(rows)]


def _known(value: int) -> int | None:
    return None if value == NONE else int(value)
