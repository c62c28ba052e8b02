"""Import one backend in a throwaway process and say what it sees:
``python -m workers.tools.doctor_probe torch`` (or ``mlx``) prints one JSON object.

``prospect doctor`` and ``GET /api/system/doctor`` run this with the workers' interpreter, so
the server never imports torch or mlx itself (and a backend that crashes on import takes only
this process down). torch's device is chosen by ``workers.torch.device``: the same code a
torch worker runs, so the doctor names the device a job would really get.
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any


def probe_torch() -> dict[str, Any]:
    import torch

    from workers.torch.device import Platform, choose_device

    facts = Platform.detect()
    out: dict[str, Any] = {
        "version": torch.__version__, "cuda_build": torch.version.cuda,
        "cuda_available": facts.has_cuda, "cuda_bf16": facts.cuda_bf16,
        "cuda_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if facts.has_cuda else [],
        "mps_built": facts.mps_built, "mps_available": facts.has_mps,
        "device": choose_device(facts).device, "dtype": choose_device(facts).dtype,
        "cpu_capability": _call(lambda: torch.backends.cpu.get_cpu_capability()),
        "mac_version": platform.mac_ver()[0] or None,
    }
    if facts.has_mps:  # bf16 on MPS depends on the macOS release: try one op
        out["mps_bf16"] = _call(lambda: bool(
            (torch.ones(2, dtype=torch.bfloat16, device="mps") * 2).sum().item() == 4))
    return out


def probe_mlx() -> dict[str, Any]:
    import mlx.core as mx

    info = _call(lambda: dict(mx.device_info())) or {}
    return {
        "version": getattr(mx, "__version__", None),
        "device": "gpu" if mx.default_device().type == mx.gpu else "cpu",
        "metal_available": bool(_call(mx.metal.is_available)),
        "working_set_limit": info.get("max_recommended_working_set_size"),
        "memory_size": info.get("memory_size"),
    }


def _call(fn):
    """The value, or None where this build lacks the call (older torch or mlx)."""
    try:
        return fn()
    except Exception:
        return None


def main(argv: list[str]) -> int:
    probes = {"torch": probe_torch, "mlx": probe_mlx}
    if len(argv) != 1 or argv[0] not in probes:
        print("usage: python -m workers.tools.doctor_probe torch|mlx", file=sys.stderr)
        return 2
    try:
        result = {"importable": True, **probes[argv[0]]()}
    except Exception as exc:  # the import itself failed: that is the answer
        if isinstance(exc, ModuleNotFoundError) and exc.name == argv[0]:
            result = {"installed": False}  # absent, not broken
        else:
            result = {"importable": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
