"""The environment a worker process starts with: what has to be set before its interpreter
starts, so the worker itself cannot set it. The supervisor and the benchmarks use the same.

glibc (Linux) keeps freed heap memory resident and raises its mmap threshold as large blocks
are freed, so a torch job on the CPU held about 1 GB more than it used (Qwen2-0.5B shape,
batch 2 x 256, gradient checkpointing: 4.11 GB peak RSS). A fixed 1 MiB threshold serves
activation-sized blocks with mmap, and a freed one goes back to the system: 3.38 GB, the same
run about 1 % slower (bench/planner.py). A value the person set is kept.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

MMAP_THRESHOLD = str(1 << 20)


def worker_env(base: Mapping[str, str], backend: str, system: str | None = None) -> dict[str, str]:
    env = {**base, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if backend == "torch" and (system or platform.system()) == "Linux":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    return env
