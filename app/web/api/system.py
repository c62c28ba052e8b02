"""The machine this server runs on: GET /api/system, and its health: GET /api/system/doctor
(the System page and its panels are app/web/pages/system.py).

System facts come from app/system/machine.py, which reads memory fresh and caches the slow facts
(nvidia-smi, package versions), so the panel can refresh every few seconds for the cost of
reading /proc/meminfo (or sysctl and vm_stat on a Mac). The doctor imports torch and mlx in
child processes (seconds), so its answer is kept for a minute and computed once at a time
(app/system/doctor_cache.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.system.doctor_cache import cached_doctor
from app.system.gpus import system_info_with_gpus
from app.web.deps import SettingsDep

router = APIRouter()


@router.get("/api/system", tags=["system"])
async def system(request: Request) -> dict[str, Any]:
    """Memory now (total, available, swap), platform, CUDA devices (each with
    memory_total/free/used_bytes and in_use_by: the ids of the running jobs on it), which
    backends (cpu, cuda, mps, mlx) can train here and why not, and the installed library
    versions."""
    return await run_in_threadpool(system_info_with_gpus, request.app.state)


@router.get("/api/system/doctor", tags=["system"])
async def system_doctor(settings: SettingsDep) -> dict[str, Any]:
    """`prospect doctor` as JSON: status (the worst of ok / warning / problem), counts, and
    checks [{name, status, detail, action}]: Python, versions against the tested set, the
    device each backend would use and why not a faster one, bf16, memory, swap, disk, hub,
    caffeinate (macOS), API token. Backends are imported in child processes, never here;
    the answer is cached for a minute (checked_at: Unix time)."""
    return await run_in_threadpool(cached_doctor, settings)
