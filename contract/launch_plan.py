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
