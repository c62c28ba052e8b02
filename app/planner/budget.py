"""The budget a job's estimate is held against, and the verdict: unified memory on a Mac
(under Metal's working-set limit), a CUDA GPU's free memory (per GPU for a job on several:
app/planner/scale.py), or the host's free RAM. Pure functions, used by estimate.py's plan()."""

from __future__ import annotations

from typing import Any

from app.planner import scale
from app.system.machine import metal_working_set
from app.units import fmt_bytes as _gb

FITS, TIGHT, NO_FIT = "fits", "tight", "won't fit"
FIT_RATIO = 0.8  # above 80 % of the budget a job is "tight": estimates are good to ±20 %


def mac_budget(total: int, available: int, wired_limit_mb: int = 0) -> dict[str, Any]:
    """Unified memory: the GPU part must stay under the working-set limit, everything under
    what is free now (macOS and open apps keep the rest)."""
    ws = metal_working_set(total, wired_limit_mb)
    return {"kind": "unified", "bytes": min(ws, available), "device_limit": ws,
            "available": available, "total": total,
            "note": f"{_gb(total)} unified memory: the Metal working-set limit is {_gb(ws)}, "
                    f"{_gb(available)} is free now"}


def cuda_budget(devices: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(devices, key=lambda d: d.get("memory_free_bytes") or 0)
    free, total = best.get("memory_free_bytes") or 0, best.get("memory_total_bytes") or 0
    return {"kind": "cuda", "bytes": free, "device_limit": free, "available": free,
            "total": total, "note": f"GPU {best.get('index', 0)} ({best.get('name', 'CUDA')}):"
                                    f" {_gb(free)} free of {_gb(total)}"}


def cpu_budget(available: int, total: int) -> dict[str, Any]:
    return {"kind": "cpu", "bytes": available, "device_limit": None, "available": available,
            "total": total, "note": f"{_gb(available)} of {_gb(total)} RAM free now"}


def target_device(backend: str, params: dict[str, Any], system: dict[str, Any]) -> str:
    """Where the job will run on this machine: the torch worker's auto choice, or MLX's."""
    cuda = bool(system.get("cuda_devices")) and \
        system.get("backends", {}).get("cuda", {}).get("available", True)
    apple = bool(system.get("apple_silicon"))
    if backend == "mlx":
        return "gpu" if apple else "cpu"
    device = params.get("device", "auto")
    if device != "auto":
        return device
    return "cuda" if cuda else "mps" if apple else "cpu"


def budget_for(device: str, system: dict[str, Any],
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the job is held against; with ``params`` of a torch job on several GPUs, each
    process's GPU (the smallest chosen one, app/planner/scale.py)."""
    total = int(system.get("memory_total_bytes") or 0)
    available = int(system.get("memory_available_bytes") or 0)
    n = scale.processes("torch", params or {})
    if device == "cuda" and n > 1:
        return scale.gpus_budget(system.get("cuda_devices") or [], n,
                                 str((params or {}).get("gpu_ids", "")))
    if device == "cuda" and system.get("cuda_devices"):
        return cuda_budget(system["cuda_devices"])
    if device in ("mps", "gpu") or system.get("apple_silicon"):
        return mac_budget(total, available, int(system.get("iogpu_wired_limit_mb") or 0))
    return cpu_budget(available, total)


def verdict(est: dict[str, Any], budget: dict[str, Any]) -> tuple[str, float]:
    """fits / tight / won't fit, and the fraction of the budget used (the worse of the
    device limit and the free memory on a Mac)."""
    ratios = [est["total_bytes"] / max(budget["available"], 1)]
    if budget.get("device_limit"):
        ratios.append(est["device_bytes"] / max(budget["device_limit"], 1))
    ratio = max(ratios)
    return (FITS if ratio <= FIT_RATIO else TIGHT if ratio <= 1.0 else NO_FIT), ratio
