"""The launch plan of a job that runs as several processes (contract/launch_plan.py): which
GPUs (or CPU processes) and which sharding for torch, which Macs for MLX, and free ports.

The supervisor calls ``launch_plan_for`` at each start (a resume included, so a plan follows
the job's scale knobs as they are now); worker_proc writes it to ``<run_dir>/launch.json``
for workers/launch.py. A single-process job has no plan and starts as it always did.
"""

from __future__ import annotations

import socket
from typing import Any

from app.config import Settings
from app.hosts import read_hosts, resolve_hosts
from app.models import Job
from app.planner.check import DoesNotFit, choose_sharding
from app.system.machine import nvidia_smi_csv, parse_nvidia_smi
from contract.knobs_scale import parse_gpu_ids
from contract.launch_plan import LaunchPlan, is_distributed

PORT_TRIES = 50


def cuda_gpus() -> list[dict[str, Any]]:
    """This machine's CUDA GPUs as nvidia-smi lists them: [{index, name, memory_*}]."""
    return parse_nvidia_smi(nvidia_smi_csv())


def free_port() -> int:
    """A TCP port nothing listens on now (the launcher binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive ports that are free on this machine now: the ring
    backend gives each host's connection the next port from the starting one."""
    for _ in range(PORT_TRIES):
        base = free_port()
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"found no {count} free consecutive TCP ports for mlx.launch")


def torch_gpu_ids(params: dict[str, Any], gpus: list[dict[str, Any]]) -> list[int]:
    """The GPU indices the processes train on; [] for CPU processes (device cpu, or no CUDA
    GPU here: the job was checked at submission to say device cpu then)."""
    if params.get("device") == "cpu" or not gpus:
        return []
    asked = parse_gpu_ids(str(params.get("gpu_ids", "") or ""))
    if asked:
        return asked
    n = int(params.get("num_processes", 1) or 1)
    return sorted(int(g["index"]) for g in gpus)[:n]


def sharding(job: Job, gpu_ids: list[int]) -> str:
    """ddp or fsdp: as asked, or for auto the planner's choice against the chosen GPUs
    (ddp when the model fits one, else fsdp). CPU processes use ddp: gloo has no FSDP
    advantage there, the processes share one memory."""
    asked = job.params.get("distributed", "auto")
    if asked in ("ddp", "fsdp"):
        return asked
    if not gpu_ids:
        return "ddp"
    try:
        return choose_sharding(job.model_path, job.backend, job.method, job.params)
    except DoesNotFit:
        return "fsdp"  # a job started with force: sharded, it has the better chance


def launch_plan_for(job: Job, settings: Settings,
                    gpus: list[dict[str, Any]] | None = None) -> LaunchPlan | None:
    """The job's plan, or None when it runs as one process. ParamError (from the Hosts
    setting) or OSError (no free ports) when it cannot be launched now."""
    params = job.params or {}
    if not is_distributed(job.backend, params):
        return None
    if job.backend == "torch":
        ids = torch_gpu_ids(params, cuda_gpus() if gpus is None else gpus)
        return LaunchPlan(launcher="accelerate", processes=int(params["num_processes"]),
                          gpu_ids=ids, fsdp=sharding(job, ids) == "fsdp",
                          main_process_port=free_port())
    hosts = resolve_hosts(str(params.get("hosts", "")), settings)
    setting = read_hosts(settings)
    ports = sum(max(1, len(h.get("ips") or [])) for h in hosts)
    return LaunchPlan(launcher="mlx", processes=len(hosts), hosts=hosts,
                      mlx_backend=setting.get("backend", "ring"),
                      starting_port=free_port_range(ports),
                      envs=list(setting.get("envs", [])))


def one_gpu_env(job: Job, env: dict[str, str],
                gpus: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The CUDA_VISIBLE_DEVICES a single-process torch job needs on a machine with several
    GPUs: one. With two or more visible, HF Trainer wraps the model in nn.DataParallel, which
    TRL's KTOTrainer refuses ("does not support nn.DataParallel"; seen on a 2 × H200 box), so
    the job would fail at once. The GPU is ``gpu_ids``' one entry (nvidia-smi's index, as
    everywhere: the scale checks validate it so), else the first of the person's own
    CUDA_VISIBLE_DEVICES, else GPU 0. Returns the variables to set (none where one GPU or
    none is visible, on the CPU, or for a distributed job, whose launcher places the ranks)."""
    params = job.params or {}
    if job.backend != "torch" or is_distributed(job.backend, params) or \
            params.get("device", "auto") not in ("auto", "cuda"):
        return {}
    chosen = parse_gpu_ids(str(params.get("gpu_ids", "") or ""))
    if chosen:
        return {"CUDA_VISIBLE_DEVICES": str(chosen[0])}
    if "CUDA_VISIBLE_DEVICES" in env:  # the person's own choice, narrowed to its first GPU
        visible = [v.strip() for v in env["CUDA_VISIBLE_DEVICES"].split(",") if v.strip()]
        return {"CUDA_VISIBLE_DEVICES": visible[0]} if len(visible) > 1 else {}
    gpus = cuda_gpus() if gpus is None else gpus
    return {"CUDA_VISIBLE_DEVICES": str(gpus[0]["index"])} if len(gpus) >= 2 else {}
