"""Whether the new-job form offers the scale knobs (contract/knobs_scale.py), and with what.

torch: where this machine has two or more CUDA GPUs that torch can use, a "GPUs" select for
num_processes (1..N) beside gpu_ids and distributed. MLX: where the Hosts setting
(app/hosts.py) has two or more hosts, the hosts knob with their names. Elsewhere the knobs are
not on the form, so a job keeps their defaults: one process, as always. A form filled with
scale values that differ from the defaults (a clone of a 4-GPU job) shows them anyway, so
nothing is dropped without a word.

The GPU count comes through the server's machine probes (app/system/gpus.py server_probes),
which a test replaces through ``app.state.probes`` to pose as a 2-GPU machine.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.hosts import read_hosts
from app.system.gpus import server_probes
from app.system.machine import parse_nvidia_smi
from contract.knob_core import Method, ParamError

NO_SCALE: dict[str, Any] = {"gpus": 0, "hosts": [], "hosts_error": ""}


def scale_facts(state: Any, settings: Settings) -> dict[str, Any]:
    """{gpus: CUDA GPUs torch can train on, hosts: the Hosts setting's names,
    hosts_error: why the setting could not be read}."""
    probes = server_probes(state)
    cuda_torch = probes.has_module("torch") and bool(probes.torch_cuda())
    gpus = len(parse_nvidia_smi(probes.nvidia_smi())) if cuda_torch else 0
    try:
        hosts = [h["name"] for h in read_hosts(settings).get("hosts", [])]
        error = ""
    except ParamError as exc:
        hosts, error = [], exc.message
    return {"gpus": gpus, "hosts": hosts, "hosts_error": error}


def scale_offered(spec: Method, scale: dict[str, Any] | None) -> bool:
    scale = scale or NO_SCALE
    if spec.backend == "torch":
        return scale["gpus"] > 1
    return spec.backend == "mlx" and len(scale["hosts"]) >= 2


def scale_shown(spec: Method, scale: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """Offered here, or filled with values other than the defaults (shown, not dropped)."""
    if scale_offered(spec, scale):
        return True
    return any(str(values.get(f"params.{k.name}", k.default)).strip() not in ("", str(k.default))
               for k in spec.knobs if k.group == "scale")
