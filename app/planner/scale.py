"""The planner for a job spread over several processes (torch's ``num_processes`` > 1, under
``accelerate launch``): what each process holds, and the budget it is held against.

Pure functions, used by app/planner/estimate.py. On CUDA every process has a GPU of its own,
so the estimate is per GPU and is compared with the smallest of the chosen GPUs:
- ddp: each GPU holds the whole single-process job at ``per_device_train_batch_size``, plus
  DDP's gradient buckets (the gradients flattened for the all-reduce, and the reduced copy:
  about 2 × the trainable parameters' bytes; with LoRA that is small);
- fsdp: the weights (the frozen base too), the adapter, its gradients and AdamW's moments are
  sharded, 1/N on each GPU; activations are not (each GPU runs its own rows), and each
  block's full weights are gathered for its forward and backward (the next one prefetched).
Anywhere else (CPU processes over gloo, the tests' case) the N processes share the host's
memory: the job needs N × the single-process estimate.
"""

from __future__ import annotations

from typing import Any

from app.units import fmt_bytes

SHARDED = ("weights", "adapter", "optimizer", "gradients")  # the rows FSDP divides by N
DDP_BUCKETS = 2  # × the trainable parameters' fp32 bytes
FSDP_GATHERED_BLOCKS = 2  # the block being run and the one prefetched


def processes(backend: str, params: dict[str, Any]) -> int:
    """How many processes share the job (MLX's hosts are separate Macs: each plans alone)."""
    if backend != "torch":
        return 1
    try:
        return max(1, int(params.get("num_processes", 1) or 1))
    except (TypeError, ValueError):
        return 1


def sharding_of(params: dict[str, Any]) -> str:
    """ddp or fsdp as asked; auto reads ddp here (plan() decides auto against the budget)."""
    return "fsdp" if params.get("distributed") == "fsdp" else "ddp"


def per_gpu_rows(rows: list[tuple[str, float, str]], n: int, sharding: str, lora_n: int,
                 layers: int) -> list[tuple[str, float, str]]:
    """The single-process breakdown (before the overhead) as one of N GPUs holds it."""
    if sharding == "ddp":
        return [*rows, ("DDP buckets", DDP_BUCKETS * lora_n * 4.0,
                        f"the adapter's gradients flattened for the all-reduce over {n} "
                        "GPUs, and the reduced copy")]
    out = []
    full_weights = 0.0
    for name, size, note in rows:
        if name in SHARDED:
            full_weights += size if name == "weights" else 0.0
            out.append((name, size / n, f"{note}; sharded, 1/{n} on each GPU"))
        else:
            out.append((name, size, note))
    gathered = full_weights / max(layers, 1) * FSDP_GATHERED_BLOCKS
    out.append(("FSDP gather", gathered, "one block's full weights gathered for its forward "
                "and backward, the next one prefetched"))
    return out


def spread(est: dict[str, Any], n: int, sharding: str, device: str) -> dict[str, Any]:
    """The finished single-process-shaped estimate as the whole job sees it. On CUDA the
    totals stay per GPU (what each GPU must hold); elsewhere they are N × one process."""
    per = int(est["total_bytes"])
    out = dict(est, processes=n, sharding=sharding, per_process_bytes=per,
               all_bytes=per * n, per_gpu=device == "cuda")
    if device != "cuda":
        for key in ("total_bytes", "allocated_bytes", "device_bytes"):
            out[key] = est[key] * n
    return out


def need_text(est: dict[str, Any]) -> str:
    """"12.0 GiB", "12.0 GiB per GPU × 4 (fsdp)" or "8.0 GiB (2 processes × 4.0 GiB)"."""
    n = est.get("processes", 1)
    if n <= 1:
        return fmt_bytes(est["total_bytes"])
    if est.get("per_gpu"):
        return f"{fmt_bytes(est['total_bytes'])} per GPU × {n} ({est['sharding']})"
    return f"{fmt_bytes(est['total_bytes'])} ({n} processes × " \
           f"{fmt_bytes(est['per_process_bytes'])})"


def chosen_gpus(devices: list[dict[str, Any]], n: int, gpu_ids: str) -> list[dict[str, Any]]:
    """The GPUs the job would train on: ``gpu_ids`` when given, else the first N by index."""
    by_index = sorted(devices, key=lambda d: d.get("index", 0))
    ids = [int(p) for p in str(gpu_ids or "").split(",") if p.strip().isdigit()]
    if ids:
        return [d for d in by_index if d.get("index", 0) in ids]
    return by_index[:n]


def gpus_budget(devices: list[dict[str, Any]], n: int, gpu_ids: str) -> dict[str, Any]:
    """Each process's budget: the free memory of the smallest chosen GPU. Too few GPUs here
    is a budget of nothing, with a ``problem`` saying how to fix it."""
    chosen = chosen_gpus(devices, n, gpu_ids)
    if len(chosen) < n:
        have = ", ".join(str(d.get("index", 0)) for d in devices) or "none"
        if gpu_ids:
            problem = (f"gpu_ids {gpu_ids} names GPUs this machine does not have (its GPUs: "
                       f"{have}): list GPUs it has")
        else:
            problem = (f"num_processes {n} needs {n} GPUs and this machine has "
                       f"{len(devices)} (index {have}): set num_processes to "
                       f"{max(len(devices), 1)} or fewer")
        return {"kind": "cuda", "bytes": 0, "device_limit": 0, "available": 0, "total": 0,
                "per_gpu": True, "gpus": [], "note": problem, "problem": problem}
    small = min(chosen, key=lambda d: d.get("memory_free_bytes") or 0)
    free, total = small.get("memory_free_bytes") or 0, small.get("memory_total_bytes") or 0
    names = ",".join(str(d.get("index", 0)) for d in chosen)
    return {"kind": "cuda", "bytes": free, "device_limit": free, "available": free,
            "total": total, "per_gpu": True, "gpus": [d.get("index", 0) for d in chosen],
            "note": f"per GPU, the smallest of GPUs {names}: GPU {small.get('index', 0)} "
                    f"({small.get('name', 'CUDA')}) has {fmt_bytes(free)} free of "
                    f"{fmt_bytes(total)}"}
