"""The environment a worker process starts with: what has to be set before its interpreter
starts, so the worker itself cannot set it. The supervisor and the benchmarks use the same.

glibc (Linux) keeps freed heap memory resident and raises its mmap threshold as large blocks
are freed, so a torch job on the CPU held about 1 GB more than it used (Qwen2-0.5B shape,
batch 2 x 256, gradient checkpointing: 4.11 GB peak RSS). A fixed 1 MiB threshold serves
activation-sized blocks with mmap, and a freed one goes back to the system: 3.38 GB, the same
run about 1 % slower (bench/planner.py). A value the person set is kept.

That threshold alone also turns off glibc's top padding, so every small step re-faults its
pages from the kernel: 2,000-2,650 page faults a step on a tiny KTO job against about 50 for
bare TRL, +22 % CPU a step (bench/peer_kto.py). A 64 MiB top pad keeps them resident (25-150
faults a step) and the peak the same (3.427 against 3.429 GB on the run above).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

MMAP_THRESHOLD = str(1 << 20)
TOP_PAD = str(64 << 20)


def worker_env(base: Mapping[str, str], backend: str, system: str | None = None) -> dict[str, str]:
    env = {**base, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if backend == "torch" and (system or platform.system()) == "Linux":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
        env.setdefault("MALLOC_TOP_PAD_", TOP_PAD)
    return env
