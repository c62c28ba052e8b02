"""How a job is launched when it runs as several processes: the plan the server writes to
``<run_dir>/launch.json`` and the launcher command it becomes.

One process (the default) is started as ``python -m workers.<backend> --config …``, as
always. Several are started as ``python -m workers.launch --config …`` (workers/launch.py),
which reads this plan and runs the real launcher, never a home-made one:

- torch: ``accelerate launch`` (torchrun underneath), one process per GPU, DDP or FSDP;
  on a machine without CUDA the processes train on the CPU over gloo (what the tests use);
- mlx: ``mlx.launch`` with a hostfile in mlx's own format (ring backend by default), one
  process per host; a host named ``127.0.0.1`` runs locally, any other through ssh.

Plain Python: the server writes the plan, the wrapper reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.knobs_scale import parse_hosts

LAUNCH_FILE = "launch.json"
HOSTFILE = "hostfile.json"  # mlx.launch's hostfile, written beside the plan
ACCELERATE_CONFIG = "accelerate_config.yaml"  # the run's own: never the user's default one


@dataclass(frozen=True)
class LaunchPlan:
    launcher: str  # "accelerate" | "mlx"
    processes: int
    # accelerate
    gpu_ids: list[int] = field(default_factory=list)  # empty: CPU processes (gloo)
    fsdp: bool = False
    main_process_port: int = 0
    # mlx: entries of mlx's hostfile ({"ssh": name, "ips": [...]}) and its backend
    hosts: list[dict[str, Any]] = field(default_factory=list)
    mlx_backend: str = "ring"
    starting_port: int = 0
    envs: list[str] = field(default_factory=list)

    @property
    def cpu(self) -> bool:
        return self.launcher == "accelerate" and not self.gpu_ids


def is_distributed(backend: str, params: dict[str, Any]) -> bool:
    """Whether a job with these params runs as several processes."""
    if backend == "torch":
        return int(params.get("num_processes", 1) or 1) > 1
    if backend == "mlx":
        return bool(parse_hosts(str(params.get("hosts", "") or "")))
    return False


def write_launch_plan(run_dir: Path, plan: LaunchPlan) -> Path:
    path = Path(run_dir) / LAUNCH_FILE
    tmp = path.with_name(f".{LAUNCH_FILE}.tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_launch_plan(run_dir: Path) -> LaunchPlan | None:
    """The run's plan; None when it has none (a single-process job) or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
        return LaunchPlan(**data)
    except (OSError, ValueError, TypeError):
        return None


# --- mlx.launch -------------------------------------------------------------------------------
# The backends mlx.launch starts over Macs: ring (TCP over each host's "ips"; needs no setup),
# jaccl / jaccl-ring (RDMA over Thunderbolt 5; each host lists its "rdma" devices) and mpi
# (mpirun, which must be installed on every Mac). nccl is for CUDA machines, not Macs.
MLX_BACKENDS = ("ring", "jaccl", "jaccl-ring", "mpi")
# Set in every rank, remote ones included: ssh starts a remote rank with a bare environment,
# so what the server's own environment gives a local worker has to travel in the hostfile.
MLX_RANK_ENVS = ("PYTHONUNBUFFERED=1", "TOKENIZERS_PARALLELISM=false")
REPO_ROOT = Path(__file__).resolve().parents[1]
# The `mlx.launch` console script's body, through the job's interpreter: the module has no
# __main__ guard (so `python -m` would do nothing), and the script's own path is not needed.
MLX_LAUNCH = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"


def mlx_command(plan: LaunchPlan, python: str, config_path: Path, run_dir: Path) -> list[str]:
    """Write ``<run_dir>/hostfile.json`` in mlx.launch's own format and return the command
    that launches the MLX worker on every host of it (rank i on hosts[i]). Every Mac runs
    ``python -m workers.mlx`` from this repository's folder with this interpreter, so each
    needs the same paths (a remote Mac's checkout and venv where this one has them); the run
    folder must be one every rank can write (ranks/<r>.json). ValueError names what is
    missing from the plan."""
    if plan.mlx_backend not in MLX_BACKENDS:
        raise ValueError(f"MLX backend {plan.mlx_backend!r} is not one mlx.launch starts over "
                         f"Macs: pick one of {', '.join(MLX_BACKENDS)}")
    if not plan.hosts:
        raise ValueError("the launch plan lists no hosts: an MLX job on this Mac alone is "
                         "started without mlx.launch")
    for host in plan.hosts:
        if not host.get("ssh"):
            raise ValueError(f"a host of the plan has no ssh name: {host}")
        if plan.mlx_backend in ("ring", "jaccl", "jaccl-ring") and not host.get("ips") \
                and (plan.mlx_backend == "ring" or host is plan.hosts[0]):
            raise ValueError(f"host {host['ssh']!r} has no IP address: the {plan.mlx_backend} "
                             "backend connects the processes over the hosts' IPs; give it "
                             "one in the Hosts setting")
    envs = [*plan.envs, *(e for e in MLX_RANK_ENVS
                          if not any(v.startswith(e.split("=")[0] + "=") for v in plan.envs))]
    hostfile = Path(run_dir) / HOSTFILE
    hostfile.write_text(json.dumps({"backend": plan.mlx_backend, "envs": envs,
                                    "hosts": plan.hosts}, indent=1), encoding="utf-8")
    port = ["--starting-port", str(plan.starting_port)] if plan.starting_port else []
    return [python, "-c", MLX_LAUNCH, "--hostfile", str(hostfile),
            "--backend", plan.mlx_backend, *port, "--cwd", str(REPO_ROOT), "--",
            python, "-m", "workers.mlx", "--config", str(config_path)]


# --- accelerate launch ------------------------------------------------------------------------
# FSDP over a LoRA model: every decoder layer its own shard unit (the model's _no_split_modules
# say which class that is), the original parameters kept so the frozen base and the trainable
# LoRA weights can share a unit, and full state dicts so that a checkpoint holds the usual
# adapter_model.safetensors (our intactness check and a resume with another process count
# read that file; a sharded dict would leave only FSDP's own shards).
FSDP_CONFIG = {
    "fsdp_version": 1,
    "fsdp_sharding_strategy": "FULL_SHARD",
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_use_orig_params": True,
    "fsdp_state_dict_type": "FULL_STATE_DICT",
    "fsdp_offload_params": False,
    "fsdp_sync_module_states": True,  # every rank starts from rank 0's weights
    "fsdp_cpu_ram_efficient_loading": False,
    "fsdp_forward_prefetch": False,
    "fsdp_backward_prefetch": "BACKWARD_PRE",
}


def accelerate_config(plan: LaunchPlan) -> dict[str, Any]:
    """The run's own accelerate config: everything ``accelerate launch`` would otherwise read
    from the user's ~/.cache/huggingface/accelerate/default_config.yaml is set here."""
    if plan.processes < 2:
        raise ValueError(f"accelerate launches 2 or more processes, the plan has "
                         f"{plan.processes}: a job of one process is started without it")
    if plan.gpu_ids and len(plan.gpu_ids) != plan.processes:
        raise ValueError(f"the plan names {len(plan.gpu_ids)} GPUs for {plan.processes} "
                         "processes: one process per GPU")
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP" if plan.fsdp else "MULTI_GPU",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": plan.processes,
        # On a machine without CUDA, MULTI_GPU with every "GPU" still starts torchrun's
        # processes, which train on the CPU over gloo (the worker asks for device cpu); the
        # launcher's own CPU mode would go through mpirun instead.
        "gpu_ids": ",".join(str(i) for i in plan.gpu_ids) if plan.gpu_ids else "all",
        "use_cpu": False,
        "main_process_port": plan.main_process_port,  # 0: accelerate picks a free one
        "rdzv_backend": "static",
        "same_network": True,
        # The worker's TrainingArguments set bf16/fp16 themselves, and an Accelerator's own
        # mixed_precision argument wins over this launcher default.
        "mixed_precision": "no",
        "downcast_bf16": "no",
        "debug": False,
        "enable_cpu_affinity": False,
        "dynamo_config": {},
        **({"fsdp_config": dict(FSDP_CONFIG)} if plan.fsdp else {}),
    }


def accelerate_command(plan: LaunchPlan, python: str, config_path: Path,
                       run_dir: Path) -> list[str]:
    """Write ``<run_dir>/accelerate_config.yaml`` and return the ``accelerate launch``
    command that starts ``python -m workers.torch`` once per process. The file is JSON, which
    YAML reads as is (accelerate reads it with yaml.safe_load). ValueError names what is
    wrong with the plan."""
    if plan.launcher != "accelerate":
        raise ValueError(f"the plan is for {plan.launcher!r}, not accelerate")
    config = accelerate_config(plan)
    path = Path(run_dir) / ACCELERATE_CONFIG
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(path),
            "-m", "workers.torch", "--config", str(config_path)]
