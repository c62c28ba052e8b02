"""``prospect doctor``: the troubleshooting guide as checks Prospect runs on itself.

Each check is a small function of ``Facts`` (what this machine is) returning a ``Check``: ok,
warning or problem, and for a problem the one thing to do. ``gather()`` reads the facts:
app/system/machine.py's probes for the platform, memory and GPUs, importlib.metadata for versions,
and workers/tools/doctor_probe.py in a child process for what torch and mlx see once imported (the
server never imports them). A test hands in a Mac's facts on Linux, as for app/system/machine.py.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from app.config import Settings
from app.hub.cache import downloads_allowed
from app.hub.inspect import hub_cache_dir
from app.system.machine import Probes, is_apple_silicon, memory, metal_working_set, parse_nvidia_smi
from app.units import GiB, fmt_bytes

OK, WARNING, PROBLEM = "ok", "warning", "problem"
ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("fastapi", "starlette", "torch", "transformers", "trl", "peft", "accelerate",
           "datasets", "mlx", "mlx-lm")
PROBE_TIMEOUT_S = 90.0  # importing torch takes 2-10 s; a busy 2-core machine needs headroom
HUB_TIMEOUT_S = 1.5  # one TCP connect: an offline machine answers in this, never hangs
DISK_PROBLEM, DISK_WARNING = 2 * GiB, 10 * GiB
SWAP_WARNING = 1 * GiB
LOW_MEMORY = 4 * GiB


@dataclass
class Check:
    name: str
    status: str  # ok | warning | problem
    detail: str
    action: str = ""  # the one thing to do, for a warning or a problem


@dataclass
class Facts:
    """Everything the checks read; tests build one by hand to pose as another machine."""

    system: str = "Linux"  # platform.system()
    machine: str = "x86_64"  # platform.machine(): x86_64 under Rosetta on an arm64 Mac
    arm64_cpu: bool = False  # the chip is arm64 (sysctl hw.optional.arm64), whatever Python is
    python: str = platform.python_version()
    tested_python: str | None = None  # 'Python 3.11' line of the constraints file
    constraints: str | None = None  # the constraints file, relative to the repository
    pins: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    torch: dict[str, Any] | None = None  # tools/doctor_probe.py's; None: not installed
    mlx: dict[str, Any] | None = None
    cuda_devices: list[dict[str, Any]] = field(default_factory=list)  # nvidia-smi's list
    memory: dict[str, int] = field(default_factory=dict)  # total, available, swap_*
    wired_limit_mb: int = 0  # sysctl iogpu.wired_limit_mb (0: macOS's default)
    disks: list[dict[str, Any]] = field(default_factory=list)  # {label, path, free, total}
    downloads: bool = False  # PROSPECT_ALLOW_DOWNLOADS on and HF_HUB_OFFLINE not set
    offline_reason: str = ""
    hub_url: str = "https://huggingface.co"
    hub_reachable: Callable[[], bool] = lambda: False  # asked only when downloads are on
    has_caffeinate: bool = False
    host: str = "127.0.0.1"
    loopback: bool = True
    api_token: bool = False

    @property
    def mac(self) -> bool:
        return self.system == "Darwin"

    @property
    def rosetta(self) -> bool:
        return self.mac and self.arm64_cpu and self.machine != "arm64"


# --- the checks (pure) ------------------------------------------------------------------------
def install(f: Facts, extra: str) -> str:
    if f.constraints:
        return f"pip install -c {f.constraints} -e '.[{extra}]'   (or: make install)"
    return f"pip install 'prospect[{extra}]'"


def _pinned(f: Facts, dist: str) -> str:
    version = (f.versions.get(dist) or "").split("+")[0]
    pin = f.pins.get(dist)
    return f"{version} (tested: {pin})" if pin and pin != version else version


def check_python(f: Facts) -> Check:
    mm = ".".join(f.python.split(".")[:2])
    if tuple(int(p) for p in f.python.split(".")[:2]) < (3, 11):
        return Check("Python", PROBLEM, f"Python {f.python}: Prospect needs 3.11 or later",
                     "install Python 3.11, then rm -rf .venv && make install")
    if f.tested_python and mm != f.tested_python:
        return Check("Python", WARNING, f"Python {f.python}; the tested set is for "
                     f"{f.tested_python}: torch and mlx wheels may lag a new Python",
                     f"if an install fails, use Python {f.tested_python}")
    return Check("Python", OK, f"Python {f.python}")


def check_versions(f: Facts) -> Check:
    if not f.pins:
        return Check("Versions", OK, "no constraints file (installed as a package): the "
                     "version ranges of pyproject.toml apply")
    off = [f"{d} {v} (tested {f.pins[d]})" for d in CHECKED
           if (v := (f.versions.get(d) or "").split("+")[0]) and d in f.pins and v != f.pins[d]]
    if off:
        return Check("Versions", WARNING, "not the tested set: " + ", ".join(off),
                     f"make install (or pip install -c {f.constraints} -e '.[torch,mlx]')")
    n = sum(1 for d in CHECKED if f.versions.get(d))
    return Check("Versions", OK, f"the {n} libraries Prospect leans on match {f.constraints}")


def check_torch(f: Facts) -> Check:
    t = f.torch
    if t is None:
        return Check("torch", WARNING if _mlx_works(f) else PROBLEM,
                     "not installed: no KTO with TRL", install(f, "torch"))
    version = _pinned(f, "torch") or t.get("version", "")
    if not t.get("importable"):
        return Check("torch", PROBLEM, f"does not import in the workers' Python: "
                     f"{t.get('error')}",
                     f"pip install --force-reinstall torch=={f.pins.get('torch', version)}")
    device = t.get("device", "cpu")
    if f.rosetta:
        return Check("torch", PROBLEM, f"{version} on cpu: this Python is x86_64 under "
                     "Rosetta, so torch cannot see the Apple GPU (MPS)",
                     "install an arm64 Python (platform.machine() must say arm64), then "
                     "rm -rf .venv && make install")
    if f.mac and f.arm64_cpu and not t.get("mps_built"):
        return Check("torch", PROBLEM, f"{version} on cpu: this torch was built without MPS",
                     "pip install --force-reinstall --index-url https://pypi.org/simple "
                     f"torch=={f.pins.get('torch', version.split()[0])}")
    if f.mac and f.arm64_cpu and not t.get("mps_available"):
        return Check("torch", PROBLEM, f"{version} on cpu: MPS is built in but not available "
                     f"(macOS {t.get('mac_version') or '?'})", "update macOS to 12.3 or later")
    if f.cuda_devices and not t.get("cuda_build"):
        return Check("torch", PROBLEM, f"{version} on cpu: a CPU-only build, yet nvidia-smi "
                     f"lists {len(f.cuda_devices)} GPU(s)",
                     "pip install --force-reinstall --index-url "
                     "https://download.pytorch.org/whl/cu128 torch  (the CUDA your driver has)")
    if f.cuda_devices and not t.get("cuda_available"):
        return Check("torch", PROBLEM, f"{version} on cpu: built for CUDA {t.get('cuda_build')}"
                     " but cannot use the GPU (a driver older than the build?)",
                     "update the NVIDIA driver, or install torch for the CUDA nvidia-smi shows")
    why = {"cuda": ", ".join(t.get("cuda_names") or []) or "NVIDIA GPU",
           "mps": "the Apple GPU",
           "cpu": "no GPU torch can use here: no NVIDIA GPU" + ("" if f.mac else
                                                                  ", and MPS needs a Mac")}
    return Check("torch", OK, f"{version} on {device} ({why.get(device, device)})")


def check_bf16(f: Facts) -> Check:
    t = f.torch or {}
    if not t.get("importable"):
        return Check("bf16", OK, "no torch: MLX picks its own precision")
    device = t.get("device")
    if device == "cuda":
        if t.get("cuda_bf16"):
            return Check("bf16", OK, "the GPU does bf16: torch jobs train in bfloat16")
        return Check("bf16", WARNING, "this GPU has no bf16 (older than Ampere): jobs train in "
                     "float32, which needs about twice the memory",
                     "set dtype float16 on the job to halve activation memory")
    if device == "mps":
        if t.get("mps_bf16"):
            return Check("bf16", OK, "bf16 works on MPS (jobs use float32 unless asked)")
        return Check("bf16", WARNING, "bf16 does not work on MPS here: jobs use float32",
                     "update macOS to 14 or later for bf16 on MPS")
    return Check("bf16", OK, "cpu: jobs train in float32; bf16 on request is fast only with "
                 f"AVX-512 BF16 or AMX (this CPU: {t.get('cpu_capability') or 'unknown'})")


def _mlx_works(f: Facts) -> bool:
    return bool(f.mlx and f.mlx.get("importable"))


def check_mlx(f: Facts) -> Check:
    m = f.mlx
    if f.mac and not f.arm64_cpu:
        return Check("MLX", OK, "not used: MLX needs Apple silicon (torch runs on this Mac)")
    if m is None:
        return Check("MLX", WARNING if f.torch else PROBLEM, "not installed: no MLX jobs"
                     + (" (the fast path on this Mac)" if f.mac else ""), install(f, "mlx"))
    version = _pinned(f, "mlx") or m.get("version", "")
    if not m.get("importable"):
        return Check("MLX", PROBLEM, f"does not import in the workers' Python: "
                     f"{m.get('error')}",
                     "pip install --force-reinstall "
                     + (f"mlx=={f.pins['mlx']}" if "mlx" in f.pins else "mlx"))
    if f.rosetta:
        return Check("MLX", PROBLEM, "this Python is x86_64 under Rosetta: MLX needs an arm64 "
                     "Python", "install an arm64 Python, then rm -rf .venv && make install")
    if f.mac and m.get("device") != "gpu":
        return Check("MLX", PROBLEM, f"{version} on cpu: Metal is not available to MLX",
                     "pip install --force-reinstall mlx mlx-metal  (then check macOS 14+)")
    where = "gpu (Metal)" if f.mac else f"{m.get('device')} (MLX's Linux build; Metal needs a Mac)"
    return Check("MLX", OK, f"{version} on {where}")


def check_memory(f: Facts) -> Check:
    total, free = f.memory.get("total", 0), f.memory.get("available", 0)
    if f.mac and f.arm64_cpu:
        limit = (f.mlx or {}).get("working_set_limit") or metal_working_set(total,
                                                                           f.wired_limit_mb)
        detail = (f"unified memory {fmt_bytes(total)}, {fmt_bytes(free)} free; the GPU may "
                  f"keep {fmt_bytes(limit)} resident (Metal working-set limit)")
    elif f.cuda_devices:
        gpus = "; ".join(f"GPU {d['index']} {d['name']}: {fmt_bytes(d['memory_free_bytes'])} "
                         f"free of {fmt_bytes(d['memory_total_bytes'])}" for d in f.cuda_devices)
        detail = f"{gpus}; memory {fmt_bytes(free)} free of {fmt_bytes(total)}"
        if any(d["memory_free_bytes"] < d["memory_total_bytes"] / 4 for d in f.cuda_devices):
            return Check("Memory", WARNING, detail + ": another process holds most of a GPU",
                         "stop it (nvidia-smi lists it) before a long run")
    else:
        detail = f"memory {fmt_bytes(free)} free of {fmt_bytes(total)}"
    if total and free < LOW_MEMORY:
        return Check("Memory", WARNING, detail + ": little is free for a model",
                     "close other apps; the New job page's plan says what fits")
    return Check("Memory", OK, detail)


def check_swap(f: Facts) -> Check:
    used, total = f.memory.get("swap_used", 0), f.memory.get("swap_total", 0)
    if used > SWAP_WARNING:
        return Check("Swap", WARNING, f"{fmt_bytes(used)} of swap in use: a run that swaps "
                     "crawls", "close other apps before a long run")
    return Check("Swap", OK, f"{fmt_bytes(used)} in use of {fmt_bytes(total)}" if total
                 else "no swap")


def check_disk(d: dict[str, Any]) -> Check:
    free, label = d["free"], d["label"]
    detail = f"{fmt_bytes(free)} free of {fmt_bytes(d['total'])} at {d['path']}"
    if free < DISK_PROBLEM:
        return Check(f"Disk ({label})", PROBLEM, detail + ": a checkpoint may not fit",
                     f"free space there, or point {d['env']} at a larger disk")
    if free < DISK_WARNING:
        return Check(f"Disk ({label})", WARNING, detail + ": room for few models",
                     f"free space there, or point {d['env']} at a larger disk")
    return Check(f"Disk ({label})", OK, detail)


def check_hub(f: Facts) -> Check:
    if not f.downloads:
        return Check("Hub", OK, f"workers run offline ({f.offline_reason}): a hub model must "
                     "be in the cache first (hf download <id>)")
    host = urlparse(f.hub_url).hostname or f.hub_url
    if f.hub_reachable():
        return Check("Hub", OK, f"{host} is reachable: an uncached hub model downloads once")
    return Check("Hub", PROBLEM, f"downloads are on but {host} is unreachable",
                 "connect to the network, or use models already in the cache")


def check_caffeinate(f: Facts) -> Check | None:
    if not f.mac:
        return None
    if f.has_caffeinate:
        return Check("Sleep", OK, "caffeinate keeps the Mac awake while a job trains")
    return Check("Sleep", WARNING, "caffeinate is missing: the Mac may sleep mid-run",
                 "keep the Mac awake by hand (System Settings > Lock Screen) during runs")


def check_token(f: Facts) -> Check:
    if f.loopback:
        return Check("API token", OK, f"listens on {f.host} only: no token needed")
    if f.api_token:
        return Check("API token", OK, f"listens on {f.host}; PROSPECT_API_TOKEN is set")
    return Check("API token", PROBLEM, f"PROSPECT_HOST={f.host} is not loopback and no "
                 "PROSPECT_API_TOKEN is set: the server refuses to start",
                 "export PROSPECT_API_TOKEN=$(python3 -c 'import secrets; "
                 "print(secrets.token_urlsafe(32))')")


def run_checks(f: Facts) -> list[Check]:
    checks = [check_python(f), check_versions(f), check_torch(f), check_bf16(f), check_mlx(f),
              check_memory(f), check_swap(f), *(check_disk(d) for d in f.disks),
              check_hub(f), check_caffeinate(f), check_token(f)]
    return [c for c in checks if c is not None]


def report(checks: list[Check]) -> dict[str, Any]:
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARNING, PROBLEM)}
    worst = PROBLEM if counts[PROBLEM] else WARNING if counts[WARNING] else OK
    return {"status": worst, "counts": counts, "checks": [asdict(c) for c in checks]}


# --- gathering the facts ----------------------------------------------------------------------
def read_constraints(path: Path) -> tuple[dict[str, str], str | None]:
    """name==version pins (names lower-case, local labels dropped) and the tested Python."""
    pins, python = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.lower().startswith("# python "):
            python = line.split()[2]
        elif "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.split("+")[0].strip()
    return pins, python


def constraints_path(system: str) -> Path:
    return ROOT / "constraints" / ("macos-arm64.txt" if system == "Darwin" else "linux-cpu.txt")


def run_probe(python: str, backend: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """workers/tools/doctor_probe.py's answer, or an ``importable: False`` one saying why
    there is none."""
    try:
        out = subprocess.run([python, "-m", "workers.tools.doctor_probe", backend], cwd=ROOT,
                             timeout=timeout, capture_output=True, text=True, check=False)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"importable": False, "error": f"importing {backend} took over {timeout:.0f} s"}
    except (OSError, ValueError, IndexError):
        return {"importable": False, "error": f"the probe could not run with {python}"}


def tcp_reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or url, port), timeout=timeout):
            return True
    except OSError:
        return False


def disk(label: str, path: Path, env: str) -> dict[str, Any]:
    at = path
    while not at.exists() and at != at.parent:  # the hub cache may not exist yet
        at = at.parent
    usage = shutil.disk_usage(at)
    return {"label": label, "path": str(path), "free": usage.free, "total": usage.total,
            "env": env}


def gather(settings: Settings, probes: Probes | None = None,
           env: dict[str, str] | None = None) -> Facts:
    probes = probes or Probes()
    env = dict(os.environ) if env is None else env
    system = probes.system()
    python = settings.python or sys.executable
    # Asked in the workers' interpreter (it may not be this one), both at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = dict(zip(("torch", "mlx"), pool.map(lambda b: run_probe(python, b),
                                                     ("torch", "mlx")), strict=True))
    found = {b: r for b, r in found.items() if r.get("installed", True)}
    path = constraints_path(system)
    pins, tested_python = read_constraints(path) if path.is_file() else ({}, None)
    wired = probes.sysctl("iogpu.wired_limit_mb") if system == "Darwin" else None
    hub_url = env.get("HF_ENDPOINT") or "https://huggingface.co"
    return Facts(
        system=system, machine=probes.machine(), python=platform.python_version(),
        arm64_cpu=is_apple_silicon(probes), tested_python=tested_python,
        constraints=str(path.relative_to(ROOT)) if pins else None, pins=pins,
        versions={d: probes.version(d) for d in CHECKED},
        torch=found.get("torch"), mlx=found.get("mlx"),
        cuda_devices=parse_nvidia_smi(probes.nvidia_smi()),
        memory=memory(probes, system == "Darwin"),
        wired_limit_mb=int(wired) if wired and wired.isdigit() else 0,
        disks=[disk("PROSPECT_HOME", settings.home_dir, "PROSPECT_HOME"),
               disk("hub cache", hub_cache_dir(env), "HF_HOME")],
        downloads=downloads_allowed(settings.allow_downloads, env),
        offline_reason="HF_HUB_OFFLINE is set" if settings.allow_downloads
        else "PROSPECT_ALLOW_DOWNLOADS is off",
        hub_url=hub_url, hub_reachable=lambda: tcp_reachable(hub_url),
        has_caffeinate=shutil.which("caffeinate") is not None,
        host=settings.host, loopback=settings.is_loopback, api_token=bool(settings.api_token),
    )


def doctor(settings: Settings) -> dict[str, Any]:
    return report(run_checks(gather(settings)))


def format_text(result: dict[str, Any]) -> str:
    width = max(len(c["name"]) for c in result["checks"])
    lines = []
    for c in result["checks"]:
        lines.append(f"{c['status']:<8} {c['name']:<{width}}  {c['detail']}")
        if c["action"]:
            lines.append(f"{'':<8} {'':<{width}}  -> {c['action']}")
    n = result["counts"]
    lines.append(f"\n{n[OK]} ok, {n[WARNING]} warning(s), {n[PROBLEM]} problem(s)")
    return "\n".join(lines)
