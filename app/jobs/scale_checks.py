"""The scale knobs checked against this machine (its CUDA GPUs) and the Hosts setting, at
submission and at a resume, so a job that cannot launch is a 422 naming the knob and the fix
rather than a failed run. The knobs' own rules (gpu_ids as many as num_processes, fsdp with
one process) are contract/knobs_scale.py's; these need the machine.

A resume may change the scale knobs alone (num_processes, gpu_ids, distributed, hosts): the
run goes on from its checkpoint with more or fewer processes. Any other knob changes what the
checkpoint was trained with: clone the job for that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import JobInputError
from app.hosts import resolve_hosts
from app.jobs.launching import cuda_gpus
from app.models import Job
from app.planner.check import DoesNotFit, check_fits, choose_sharding
from contract.knob_core import ParamError
from contract.knobs import method_for
from contract.knobs_scale import parse_gpu_ids
from contract.launch_plan import is_distributed

SCALE_KNOBS = ("num_processes", "gpu_ids", "distributed", "hosts")


def _gpu_list(gpus: list[dict[str, Any]]) -> str:
    return ", ".join(str(g["index"]) for g in sorted(gpus, key=lambda g: g["index"]))


def torch_scale_problem(params: dict[str, Any],
                        gpus: list[dict[str, Any]]) -> JobInputError | None:
    """What stops a torch job's processes from starting on a machine with these GPUs."""
    n = int(params.get("num_processes", 1) or 1)
    device = params.get("device", "auto")
    try:
        asked = parse_gpu_ids(str(params.get("gpu_ids", "") or ""))
    except ParamError as exc:
        return JobInputError(f"params.{exc.field}", exc.message)
    if n > 1 and device == "mps":
        return JobInputError("params.num_processes", f"several processes need CUDA GPUs "
                             f"(accelerate launch starts one per GPU); MPS trains in one "
                             f"process: set num_processes to 1, or device to cpu to run {n} "
                             "processes on the CPU")
    if device == "cpu":
        if asked:
            return JobInputError("params.gpu_ids", "device is cpu, so no GPU is used: leave "
                                 "gpu_ids empty, or set device to cuda")
        return None
    if not gpus:
        if asked:
            return JobInputError("params.gpu_ids", f"this machine has no CUDA GPU "
                                 f"(nvidia-smi lists none), so gpu_ids {params['gpu_ids']!r} "
                                 "names none it has: leave gpu_ids empty")
        if n > 1:
            return JobInputError("params.num_processes", f"this machine has no CUDA GPU "
                                 f"(nvidia-smi lists none): set device to cpu to run {n} "
                                 "processes on the CPU, or num_processes to 1")
        return None
    have = {int(g["index"]) for g in gpus}
    missing = [i for i in asked if i not in have]
    if missing:
        return JobInputError("params.gpu_ids", f"GPU {missing[0]} does not exist here: this "
                             f"machine has GPUs {_gpu_list(gpus)} (nvidia-smi's index); list "
                             "GPUs it has, or leave gpu_ids empty for the first num_processes")
    if n > len(gpus):
        return JobInputError("params.num_processes", f"num_processes {n} needs {n} CUDA GPUs "
                             f"(one process each) and this machine has {len(gpus)} (GPUs "
                             f"{_gpu_list(gpus)}): set num_processes to {len(gpus)} or fewer")
    return None


def check_scale(backend: str, params: dict[str, Any], settings: Settings,
                gpus: list[dict[str, Any]] | None = None) -> None:
    """JobInputError naming the knob and the fix when the job cannot launch here."""
    several = int(params.get("num_processes", 1) or 1) > 1
    if backend == "torch" and (several or str(params.get("gpu_ids", "") or "").strip()):
        # Only then is nvidia-smi asked (up to half a second on a machine with GPUs).
        problem = torch_scale_problem(params, cuda_gpus() if gpus is None else gpus)
        if problem is not None:
            raise problem
    elif backend == "mlx" and is_distributed(backend, params):
        try:
            resolve_hosts(str(params.get("hosts", "")), settings)
        except ParamError as exc:
            raise JobInputError(f"params.{exc.field}", exc.message) from None


def resume_params(job: Job, given: dict[str, Any], settings: Settings,
                  force: bool = False) -> dict[str, Any]:
    """The job's params with the scale knobs of a resume applied, checked as at submission
    (the knobs' rules, this machine, and the memory plan unless ``force``)."""
    for key in given:
        if key not in SCALE_KNOBS:
            raise JobInputError(f"params.{key}", f"only the scale knobs ({', '.join(SCALE_KNOBS)}"
                                f") can change on resume; clone the job to change {key}")
    if not given:  # as it was submitted; the machine may have changed since
        check_scale(job.backend, job.params or {}, settings)
        return dict(job.params or {})
    try:
        spec = method_for(job.backend, job.method)
    except ParamError as exc:
        raise JobInputError("method", exc.message) from None
    unknown = [k for k in given if spec.knob(k) is None]
    if unknown:
        mine = ", ".join(k for k in SCALE_KNOBS if spec.knob(k) is not None) or "none"
        raise JobInputError(f"params.{unknown[0]}", f"a {job.backend} {job.method} job has no "
                            f"{unknown[0]} knob; its scale knobs are {mine}")
    merged = {**(job.params or {}), **given}
    errors = spec.errors(merged)
    if errors:
        raise JobInputError(f"params.{errors[0].field}", errors[0].message)
    params = spec.validate(merged)
    check_scale(job.backend, params, settings)
    check_same_sharding(job, params)
    if not force:
        try:
            check_fits(job.model_path, job.backend, job.method, params)
        except DoesNotFit as exc:
            raise JobInputError("plan", f"with these settings the job won't fit in memory: "
                                f"{exc.result['message']} Change them, or send force: true to "
                                "resume anyway.", extra={"plan": exc.result}) from None
    return params


def check_same_sharding(job: Job, params: dict[str, Any]) -> None:
    """An FSDP checkpoint (HF Trainer's optimizer.bin, sharded state) resumes only under FSDP,
    and a DDP or one-process checkpoint (optimizer.pt) only without it: HF Trainer loads each
    from its own file, and a switch would fail at the load."""
    ckpt = Path(job.last_checkpoint) if job.last_checkpoint else None
    if job.backend != "torch" or ckpt is None or not ckpt.is_dir():
        return
    was_fsdp = (ckpt / "optimizer.bin").is_file() and not (ckpt / "optimizer.pt").is_file()
    n = int(params.get("num_processes", 1) or 1)
    wanted = params.get("distributed", "auto")
    if n > 1 and wanted == "auto":
        try:
            wanted = choose_sharding(job.model_path, job.backend, job.method, params)
        except DoesNotFit:
            wanted = "fsdp"
    now_fsdp = n > 1 and wanted == "fsdp"
    if was_fsdp and not now_fsdp:
        raise JobInputError("params.distributed", f"{ckpt.name} was saved under fsdp (its "
                            "optimizer state is sharded): resume it with distributed fsdp on 2 "
                            "or more processes, or clone the job to start over under ddp")
    if now_fsdp and not was_fsdp:
        raise JobInputError("params.distributed", f"{ckpt.name} was saved without fsdp: resume "
                            "it with distributed ddp (or one process), or clone the job to "
                            "train under fsdp from the start")
