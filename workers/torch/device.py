"""Where to train and in which precision, from the facts of this machine and two knobs.

``choose_device`` is pure: tests hand it a ``Platform`` describing a Mac, a CUDA box or a bare
CPU. Only ``Platform.detect`` imports torch.
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from workers.runtime import HintedError


@dataclass(frozen=True)
class Platform:
    has_cuda: bool
    cuda_bf16: bool  # Ampere (compute capability 8.0) or newer
    has_mps: bool
    system: str  # platform.system(): "Darwin", "Linux", "Windows"
    mps_built: bool = False  # this torch has MPS support compiled in

    @classmethod
    def detect(cls) -> Platform:
        import torch

        has_cuda = torch.cuda.is_available()
        mps = getattr(torch.backends, "mps", None)
        return cls(
            has_cuda=has_cuda,
            cuda_bf16=has_cuda and torch.cuda.is_bf16_supported(),
            has_mps=bool(mps and mps.is_available()),
            system=_platform.system(),
            mps_built=bool(mps and mps.is_built()),
        )

    @property
    def is_mac(self) -> bool:
        return self.system == "Darwin"


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda" | "mps" | "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16"

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype == "float16"

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"


class DeviceError(HintedError):
    """The asked device or precision does not exist here; ``hint`` says what to pick instead."""

    error_type = "device"


def choose_device(facts: Platform, device: str = "auto", dtype: str = "auto") -> DeviceChoice:
    chosen = _device(facts, device)
    return DeviceChoice(device=chosen, dtype=_dtype(facts, chosen, dtype))


def _device(facts: Platform, device: str) -> str:
    if device == "auto":
        if facts.has_cuda:
            return "cuda"
        return "mps" if facts.has_mps else "cpu"
    if device == "cuda" and not facts.has_cuda:
        if facts.is_mac:
            raise DeviceError(
                "CUDA does not exist on a Mac.", "Set device to mps (the Apple GPU), auto or cpu."
            )
        raise DeviceError(
            "No CUDA GPU is visible to PyTorch here (no NVIDIA driver, or a CPU-only torch build).",
            "Set device to auto or cpu, or install a CUDA build of torch.",
        )
    if device == "mps" and not facts.has_mps:
        if not facts.is_mac:
            raise DeviceError(
                "MPS is the Apple-Silicon GPU and exists only on a Mac.",
                "Set device to auto, cuda or cpu.",
            )
        if not facts.mps_built:
            raise DeviceError(
                "This PyTorch was built without MPS support.",
                "Install the standard macOS wheel of torch, or set device to cpu.",
            )
        raise DeviceError(
            "MPS is not available: it needs an Apple-Silicon Mac on macOS 12.3 or later.",
            "Set device to cpu or auto.",
        )
    if device not in ("cuda", "mps", "cpu"):
        raise DeviceError(f"Unknown device {device!r}.", "Use auto, cuda, mps or cpu.")
    return device


def _dtype(facts: Platform, device: str, dtype: str) -> str:
    if dtype == "auto":
        # bf16 only where the hardware does it natively; fp16 needs loss scaling and fails in
        # confusing ways, so it is never chosen for the person, only on request.
        return "bfloat16" if device == "cuda" and facts.cuda_bf16 else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise DeviceError(f"Unknown dtype {dtype!r}.", "Use auto, float32, bfloat16 or float16.")
    if dtype == "bfloat16" and device == "cuda" and not facts.cuda_bf16:
        raise DeviceError(
            "This GPU has no bfloat16 (that needs an Ampere or newer NVIDIA GPU).",
            "Set dtype to float16 or float32.",
        )
    if dtype == "float16" and device == "cpu":
        raise DeviceError(
            "float16 training needs a GPU.",
            "On the CPU set dtype to float32 (or bfloat16 on a recent CPU).",
        )
    return dtype
