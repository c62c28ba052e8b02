"""A background thread that reports memory every few seconds as ``memory`` events.

It measures three things (see docs/design.md, "Event protocol"):
- ``rss_bytes``: resident memory of this process and its children (psutil);
- ``system``: total / available / used memory and used swap of the machine. On a Mac this is the
  unified memory the GPU shares, the number that decides whether a job fits;
- ``backend``: what the accelerator's allocator holds, from an injectable probe (CUDA, MPS, MLX).

Nothing here imports torch or mlx at module level: the probes import them when first called.
Sampling runs on its own thread so the training loop pays nothing per step.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psutil

BackendProbe = Callable[[], dict[str, Any]]
Emit = Callable[..., Any]  # EventWriter.emit(type, **fields)


def process_rss_bytes(process: psutil.Process | None = None) -> int:
    """Resident bytes of this process plus its children (tokenizer or dataloader workers)."""
    process = process or psutil.Process()
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # the child ended between listing and reading
            total += child.memory_info().rss
    return total


def system_memory() -> dict[str, int]:
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    return {"total": vm.total, "available": vm.available, "used": vm.used, "swap_used": swap.used}


def empty_backend() -> dict[str, Any]:
    return {"name": None, "active_bytes": None, "peak_bytes": None, "driver_bytes": None}


def cuda_probe() -> dict[str, Any]:
    import torch

    return {
        "name": "cuda",
        "active_bytes": torch.cuda.memory_allocated(),
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "driver_bytes": torch.cuda.memory_reserved(),
    }


# The Mac-only calls, each in its own function so a test on Linux can stand in for it.
def mps_current_allocated() -> int:
    import torch

    return torch.mps.current_allocated_memory()


def mps_driver_allocated() -> int:
    import torch

    return torch.mps.driver_allocated_memory()


def make_mps_probe(
    current: Callable[[], int] = mps_current_allocated,
    driver: Callable[[], int] = mps_driver_allocated,
) -> BackendProbe:
    """MPS keeps no peak counter: the probe remembers the largest value it has seen."""
    peak = 0

    def probe() -> dict[str, Any]:
        nonlocal peak
        active = current()
        peak = max(peak, active)
        return {"name": "mps", "active_bytes": active, "peak_bytes": peak, "driver_bytes": driver()}

    return probe


def mlx_probe() -> dict[str, Any]:
    import mlx.core as mx

    active, cache = mx.get_active_memory(), mx.get_cache_memory()
    return {
        "name": "mlx",
        "active_bytes": active,
        "peak_bytes": mx.get_peak_memory(),
        "cache_bytes": cache,  # freed buffers MLX keeps for reuse: still held from the system
        "driver_bytes": active + cache,
    }


def torch_probe(device: str) -> BackendProbe | None:
    """The probe for a torch device type, or None for the CPU (its memory is the RSS)."""
    if device == "cuda":
        return cuda_probe
    if device == "mps":
        return make_mps_probe()
    return None


class MemorySampler:
    """Emits a ``memory`` event now and then every ``interval`` seconds until ``stop()``.

    ``backend_probe`` may be set after start (the device is known only once torch is loaded).
    The peaks it saw are kept for the run's summary.
    """

    def __init__(
        self,
        emit: Emit,
        interval: float = 2.0,
        backend_probe: BackendProbe | None = None,
        rss: Callable[[], int] = process_rss_bytes,
        system: Callable[[], dict[str, int]] = system_memory,
    ):
        self.emit = emit
        self.interval = interval
        self.backend_probe = backend_probe
        self._rss = rss
        self._system = system
        self.peak_rss_bytes = 0
        self.peak_backend_bytes: int | None = None
        # Every rank's numbers in a distributed run ({rank, host, active_bytes, peak_bytes,
        # driver_bytes}), set by rank 0 after each step's gather; emitted as backend.ranks.
        self.ranks: list[dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self) -> dict[str, Any]:
        """Measure once, update the peaks, return the fields of a memory event."""
        with self._lock:
            rss = self._rss()
            backend = empty_backend()
            if self.backend_probe is not None:
                try:
                    backend = {**backend, **self.backend_probe()}
                except Exception as exc:  # a failing probe must never stop training
                    backend["error"] = f"{type(exc).__name__}: {exc}"
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            seen = [backend.get("peak_bytes"), backend.get("active_bytes")]
            if self.ranks is not None:
                backend["ranks"] = [dict(r) for r in self.ranks]
                if self.backend_probe is not None:  # a device's peak: the fullest rank's
                    seen += [r.get("peak_bytes") for r in self.ranks]
            seen = [v for v in seen if isinstance(v, int)]
            if seen:
                self.peak_backend_bytes = max([*seen, self.peak_backend_bytes or 0])
            return {"rss_bytes": rss, "system": self._system(), "backend": backend}

    def emit_sample(self) -> None:
        with contextlib.suppress(Exception):  # a lost sample is better than a dead training job
            self.emit("memory", **self.sample())

    def _run(self) -> None:
        while True:
            self.emit_sample()
            if self._stop.wait(self.interval):
                return

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, final_sample: bool = True) -> None:
        """Stop the thread; take one last sample so short runs still report their peak."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self.interval, 1.0) + 5)
            self._thread = None
        if final_sample:
            self.emit_sample()

    def peaks(self) -> dict[str, int | None]:
        return {
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_backend_bytes": self.peak_backend_bytes,
        }
