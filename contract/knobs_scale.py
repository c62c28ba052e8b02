"""The knobs that spread one job over several processes: GPUs of this machine for torch
(``accelerate launch``), Macs for MLX (``mlx.launch``). contract/launch_plan.py turns them
into the launcher's command line."""

from __future__ import annotations

from typing import Any

from contract.knob_core import Knob, ParamError

MAX_PROCESSES = 64


def torch_scale_knobs() -> list[Knob]:
    return [
        Knob("num_processes", int, 1, "GPUs to train on, one process each. 1 trains in one "
             "process as always; N > 1 starts the job under accelerate launch, each process "
             "with per_device_train_batch_size rows a step, so the effective batch is "
             "per-device batch × accumulation × N.", group="scale", min=1,
             max=MAX_PROCESSES),
        Knob("gpu_ids", str, "", "Which GPUs, by nvidia-smi's index, comma-separated (e.g. "
             "0,1); empty: the first num_processes GPUs.", group="scale"),
        Knob("distributed", str, "auto", "How several processes share the model: ddp (each "
             "GPU holds the whole model, gradients are averaged), fsdp (weights, gradients and "
             "optimizer state sharded over the GPUs, through accelerate's FSDP plugin: for a "
             "model that does not fit one GPU), auto (ddp when the model fits one GPU, else "
             "fsdp).", group="scale", choices=("auto", "ddp", "fsdp")),
    ]


def mlx_hosts_knob() -> Knob:
    return Knob("hosts", str, "", "The Macs to train on, by the names in the Hosts setting "
                "(comma-separated), or all; empty: this Mac alone. Each host runs one process "
                "under mlx.launch and takes its share of every batch.", group="scale")


def parse_gpu_ids(text: str) -> list[int]:
    """``"0,1"`` -> [0, 1]; ParamError for anything but distinct whole numbers."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise ParamError("gpu_ids", f"must be GPU indices separated by commas, e.g. 0,1; got "
                         f"{text!r}")
    ids = [int(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise ParamError("gpu_ids", f"names a GPU twice: {text!r}")
    return ids


def parse_hosts(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


def torch_scale_errors(p: dict[str, Any]) -> list[ParamError]:
    if "num_processes" not in p:
        return []
    try:
        ids = parse_gpu_ids(p.get("gpu_ids", ""))
    except ParamError as exc:
        return [exc]
    n = p["num_processes"]
    if ids and len(ids) != n:
        return [ParamError("gpu_ids", f"names {len(ids)} GPU(s) but num_processes is {n}: "
                           f"set num_processes to {len(ids)}, or list {n} GPUs")]
    if n == 1 and p.get("distributed") == "fsdp":
        return [ParamError("distributed", "fsdp shards the model over several processes: "
                           "set num_processes to 2 or more, or distributed to auto")]
    return []
