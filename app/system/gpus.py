"""Which running jobs use which GPU, for /api/system's ``in_use_by`` and the system strip.

app/system/machine.py reads the machine and nothing else; this module hands it a probe that
reads the server's jobs. A distributed torch job's GPUs are in its launch plan
(``<run_dir>/launch.json``, contract/launch_plan.py); a single-process torch job on CUDA
(device auto or cuda) trains on the first GPU it sees: index 0, or the first one
CUDA_VISIBLE_DEVICES names when the server was started with it (workers inherit it).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from app.models import Job, JobStatus
from app.system.machine import Probes, system_info
from contract.knobs_scale import parse_gpu_ids
from contract.launch_plan import is_distributed, read_launch_plan


def first_visible_gpu(env: dict[str, str] | os._Environ = os.environ) -> int:
    first = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def job_gpus(job: Job) -> list[int]:
    """The GPU indices (nvidia-smi's) a running job trains on; [] for CPU, MPS and MLX."""
    if job.backend != "torch":
        return []
    params = job.params or {}
    if is_distributed("torch", params):
        plan = read_launch_plan(job.run_dir) if job.run_dir else None
        return list(plan.gpu_ids) if plan is not None and plan.launcher == "accelerate" else []
    if params.get("device", "auto") in ("auto", "cuda"):
        chosen = parse_gpu_ids(str(params.get("gpu_ids", "") or ""))  # what one_gpu_env gives
        return [chosen[0]] if chosen else [first_visible_gpu()]
    return []


def gpu_jobs(engine: Engine) -> dict[int, list[int]]:
    """GPU index -> ids of the starting or running jobs on it."""
    with Session(engine) as session:
        active = session.exec(select(Job).where(
            col(Job.status).in_([JobStatus.starting, JobStatus.running]))).all()
    out: dict[int, list[int]] = {}
    for job in active:
        for index in job_gpus(job):
            out.setdefault(index, []).append(job.id)
    return out


def server_probes(state: Any) -> Probes:
    """The machine probes the server answers with: ``state.probes`` where a test poses as
    another machine (a fake nvidia-smi), else the real ones, with the jobs' GPUs read from
    ``state.engine``."""
    base = getattr(state, "probes", None) or Probes()
    engine = state.engine
    return replace(base, gpu_jobs=lambda: gpu_jobs(engine))


def system_info_with_gpus(state: Any) -> dict[str, Any]:
    """system_info() as the server shows it: each CUDA device with the jobs on it."""
    return system_info(server_probes(state))
