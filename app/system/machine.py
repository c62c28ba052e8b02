"""What this machine is and what it can train with, without importing any ML library.

``system_info()`` answers "how much memory is free, which backends work here, which library
versions are installed" for the system panel, ``GET /api/system`` and the memory planner.
The server must stay light (it never imports torch or mlx), so everything is read from the
outside: ``importlib.util.find_spec`` and ``importlib.metadata`` for libraries, torch's own
``version.py`` as text for its CUDA build, ``nvidia-smi`` for GPUs, ``sysctl``/``vm_stat``
on a Mac and psutil elsewhere.

Every outside fact comes through a ``Probes`` object, so a test on Linux can hand in a Mac's
``sysctl`` and ``vm_stat`` output and check the numbers. The slow probes (nvidia-smi, package
metadata) are cached; memory is read fresh each call (it is what the panel refreshes for).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "mlx", "mlx-lm")
BACKENDS = ("cpu", "cuda", "mps", "mlx")
NVIDIA_SMI_TTL_S = 10.0  # free GPU memory moves; the device list does not
_MIB = 1024 * 1024


# --- real probes (each small, so a test can replace any one) ------------------------------

def run_command(argv: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a short command, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def sysctl(name: str) -> str | None:
    out = run_command(["sysctl", "-n", name])
    return out.strip() if out is not None else None


def vm_stat() -> str | None:
    return run_command(["vm_stat"])


_smi_lock = threading.Lock()
_smi_cache: tuple[float, str | None] | None = None


def nvidia_smi_csv() -> str | None:
    """nvidia-smi's GPU list as CSV, cached for a few seconds (it takes ~50-500 ms to run)."""
    global _smi_cache
    with _smi_lock:
        now = time.monotonic()
        if _smi_cache is None or now - _smi_cache[0] > NVIDIA_SMI_TTL_S:
            text = run_command(["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free,"
                                "memory.used", "--format=csv,noheader,nounits"])
            _smi_cache = (now, text)
        return _smi_cache[1]


@functools.lru_cache(maxsize=64)
def dist_version(name: str) -> str | None:
    """Installed version of a distribution; metadata scans site-packages, hence the cache."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=64)
def has_module(name: str) -> bool:
    """True when a top-level module can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def torch_cuda_build() -> str | None:
    """The CUDA version torch was built for ('12.8'), read from torch/version.py as text.

    A CPU-only wheel says None: then CUDA cannot work here whatever nvidia-smi shows.
    """
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return m.group(1) if m else None


def psutil_memory() -> dict[str, int]:
    import psutil  # light (a C extension of ~1 MB), imported on first use only

    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    return {"total": vm.total, "available": vm.available, "used": vm.total - vm.available,
            "swap_total": swap.total, "swap_used": swap.used}


@dataclass
class Probes:
    """Where each outside fact comes from; tests replace fields to pose as another machine."""

    system: Callable[[], str] = platform.system
    machine: Callable[[], str] = platform.machine
    sysctl: Callable[[str], str | None] = sysctl
    vm_stat: Callable[[], str | None] = vm_stat
    psutil_memory: Callable[[], dict[str, int]] = psutil_memory
    nvidia_smi: Callable[[], str | None] = nvidia_smi_csv
    has_module: Callable[[str], bool] = has_module
    version: Callable[[str], str | None] = dist_version
    torch_cuda: Callable[[], str | None] = torch_cuda_build
    cpu_count: Callable[[], int | None] = os.cpu_count
    # GPU index -> ids of the running jobs on it; the server hands in one that reads its
    # jobs (app/system/gpus.py), so this module stays free of the database.
    gpu_jobs: Callable[[], dict[int, list[int]]] = dict


# --- parsers (pure: text in, numbers out) --------------------------------------------------

def parse_vm_stat(text: str) -> dict[str, int]:
    """vm_stat's page counts as bytes, keyed by a short snake_case name.

    'Mach Virtual Memory Statistics: (page size of 16384 bytes)' gives the page size;
    'Pages free:  12345.' becomes {'free': 12345 * 16384}.
    """
    m = re.search(r"page size of (\d+) bytes", text)
    page = int(m.group(1)) if m else 4096
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        value = value.strip().rstrip(".")
        if not sep or not value.isdigit():
            continue
        name = re.sub(r"[^a-z]+", "_", key.lower().replace("pages", "")).strip("_")
        out[name] = int(value) * page
    return out


_SIZE = re.compile(r"(total|used|free)\s*=\s*([\d.]+)([KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": _MIB, "G": 1024 * _MIB, "T": 1024 * 1024 * _MIB}


def parse_swapusage(text: str) -> dict[str, int]:
    """sysctl vm.swapusage: 'total = 2048.00M  used = 1024.50M  free = 1023.50M  (encrypted)'."""
    return {k.lower(): int(float(v) * _UNITS[u.upper()]) for k, v, u in _SIZE.findall(text)}


def mac_memory(memsize: str | None, vm_stat_text: str | None,
               swapusage: str | None) -> dict[str, int] | None:
    """Unified memory the way Activity Monitor counts it, or None if the facts are missing.

    Used = app memory (anonymous pages less purgeable ones) + wired + compressed; the rest,
    file cache included, is available: macOS drops the cache before it swaps. Older vm_stat
    without 'Anonymous pages' falls back to free + inactive + speculative.
    """
    if not memsize or not memsize.strip().isdigit() or not vm_stat_text:
        return None
    total = int(memsize.strip())
    pages = parse_vm_stat(vm_stat_text)
    if "anonymous" in pages:
        used = (pages["anonymous"] - pages.get("purgeable", 0) + pages.get("wired_down", 0)
                + pages.get("occupied_by_compressor", 0))
        available = max(0, total - used)
    else:
        available = sum(pages.get(k, 0) for k in ("free", "inactive", "speculative"))
        used = total - available
    swap = parse_swapusage(swapusage or "")
    return {"total": total, "available": min(available, total), "used": max(0, used),
            "swap_total": swap.get("total", 0), "swap_used": swap.get("used", 0)}


def parse_nvidia_smi(text: str | None) -> list[dict[str, Any]]:
    """'0, NVIDIA H100 80GB HBM3, 81559, 80900, 120' lines (index, name, MiB total, free,
    used) → devices with byte counts. Without the used column it is total less free (the
    driver reserves a little, so nvidia-smi's own number is preferred)."""
    devices = []
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) not in (4, 5) or not parts[0].isdigit():
            continue
        try:
            mib = [int(float(p)) * _MIB for p in parts[2:]]
        except ValueError:
            continue
        total, free = mib[0], mib[1]
        used = mib[2] if len(mib) == 3 else max(0, total - free)
        devices.append({"index": int(parts[0]), "name": parts[1],
                        "memory_total_bytes": total, "memory_free_bytes": free,
                        "memory_used_bytes": used})
    return devices


# --- the answer ----------------------------------------------------------------------------

def is_apple_silicon(probes: Probes) -> bool:
    if probes.system() != "Darwin":
        return False
    # Under Rosetta platform.machine() says x86_64 yet the chip is arm64: ask the kernel too.
    return probes.machine() == "arm64" or probes.sysctl("hw.optional.arm64") == "1"


def backends(probes: Probes, apple: bool, cuda_devices: list[dict]) -> dict[str, dict]:
    """Which backends can train here, each with the reason when one cannot."""
    torch = probes.has_module("torch")
    mlx = probes.has_module("mlx") and probes.has_module("mlx_lm")
    cuda_build = probes.torch_cuda() if torch else None
    no_torch = "torch is not installed: pip install 'prospect[torch]'"

    def entry(ok: bool, why: str, **more: Any) -> dict:
        return {"available": ok, "reason": "" if ok else why, **more}

    if not torch:
        cuda = entry(False, no_torch)
    elif not cuda_devices:
        cuda = entry(False, "no NVIDIA GPU found (nvidia-smi lists none)")
    elif not cuda_build:
        cuda = entry(False, "this torch is a CPU-only build; install a CUDA wheel of torch")
    else:
        cuda = entry(True, "", cuda_version=cuda_build, devices=len(cuda_devices))
    if not apple:
        mps = entry(False, "MPS needs a Mac with Apple silicon")
    else:
        mps = entry(torch, no_torch)
    if not mlx:
        mlx_entry = entry(False, "mlx and mlx-lm are not installed: pip install 'prospect[mlx]'")
    elif probes.system() == "Darwin":
        mlx_entry = entry(apple, "MLX needs Apple silicon", device="gpu" if apple else None)
    elif probes.version("mlx-cpu") or probes.version("mlx-cuda"):
        mlx_entry = entry(True, "", device="cuda" if probes.version("mlx-cuda") else "cpu")
    else:
        mlx_entry = entry(False, "on Linux MLX needs its CPU build: pip install 'mlx[cpu]'")
    return {"cpu": entry(torch or mlx, "neither torch nor mlx is installed", device="cpu"),
            "cuda": cuda, "mps": mps, "mlx": mlx_entry}


def memory(probes: Probes, apple_or_mac: bool) -> dict[str, int]:
    if apple_or_mac:
        mac = mac_memory(probes.sysctl("hw.memsize"), probes.vm_stat(),
                         probes.sysctl("vm.swapusage"))
        if mac is not None:
            return mac
    return probes.psutil_memory()


def system_info(probes: Probes | None = None) -> dict[str, Any]:
    """Memory now, the machine, its GPUs, the backends that work and the library versions.

    Keys: memory_total_bytes, memory_available_bytes, memory_used_bytes, swap_total_bytes,
    swap_used_bytes, platform ('Darwin', 'Linux', …), machine ('arm64', 'x86_64'),
    apple_silicon, unified_memory (CPU and GPU share memory: Apple silicon), cpu_count,
    cuda_devices [{index, name, memory_total_bytes, memory_free_bytes, memory_used_bytes,
    in_use_by: [ids of the running jobs on it]}],
    backends {cpu|cuda|mps|mlx: {available, reason, …}}, available_backends [names],
    versions {library: version or None}, python.
    """
    probes = probes or Probes()
    system = probes.system()
    apple = is_apple_silicon(probes)
    mem = memory(probes, system == "Darwin")
    cuda_devices = parse_nvidia_smi(probes.nvidia_smi())
    in_use = probes.gpu_jobs() if cuda_devices else {}
    for dev in cuda_devices:
        dev["in_use_by"] = sorted(in_use.get(dev["index"], []))
    found = backends(probes, apple, cuda_devices)
    return {
        "memory_total_bytes": mem["total"],
        "memory_available_bytes": mem["available"],
        "memory_used_bytes": mem["used"],
        "swap_total_bytes": mem["swap_total"],
        "swap_used_bytes": mem["swap_used"],
        "platform": system,
        "machine": probes.machine(),
        "apple_silicon": apple,
        "unified_memory": apple,
        "cpu_count": probes.cpu_count(),
        "cuda_devices": cuda_devices,
        "backends": found,
        "available_backends": [b for b in BACKENDS if found[b]["available"]],
        "versions": {lib: probes.version(lib) for lib in LIBRARIES},
        "python": platform.python_version(),
    }


def metal_working_set(total_bytes: int, wired_limit_mb: int = 0) -> int:
    """Metal's recommendedMaxWorkingSetSize: what the GPU may keep resident. Reported as 2/3
    of the RAM on Macs up to 32 GiB (21845 MiB on 32 GiB, llama.cpp#2011) and 3/4 above
    (49152 MiB on 64 GiB, llama.cpp#1870); ``sysctl iogpu.wired_limit_mb`` overrides it."""
    if wired_limit_mb:
        return wired_limit_mb * 1024 * 1024
    return int(total_bytes * (2 / 3 if total_bytes <= 34 * 2**30 else 3 / 4))
