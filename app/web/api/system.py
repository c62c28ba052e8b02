"""The machine this server runs on: GET /api/system (JSON), the system panel fragment, and its
health: GET /api/system/doctor and the System page's Health panel (app/system/doctor.py).

System facts come from app/system/machine.py, which reads memory fresh and caches the slow facts
(nvidia-smi, package versions), so the panel can refresh every few seconds for the cost of
reading /proc/meminfo (or sysctl and vm_stat on a Mac). The doctor imports torch and mlx in
child processes (seconds), so its answer is kept for a minute and computed once at a time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from app.system.doctor import doctor
from app.system.machine import system_info
from app.web.pages.jobs import page

router = APIRouter()
DOCTOR_TTL_S = 60.0
_doctor_lock = threading.Lock()
_doctor_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def cached_doctor(request: Request) -> dict[str, Any]:
    """The doctor's report, at most DOCTOR_TTL_S old; concurrent callers share one run."""
    settings = request.app.state.settings
    key = str(settings.home_dir)
    with _doctor_lock:
        hit = _doctor_cache.get(key)
        if hit is None or time.monotonic() - hit[0] > DOCTOR_TTL_S:
            hit = (time.monotonic(), {**doctor(settings), "checked_at": time.time()})
            _doctor_cache[key] = hit
        return hit[1]


@router.get("/api/system", tags=["system"])
async def system() -> dict[str, Any]:
    """Memory now (total, available, swap), platform, CUDA devices, which backends (cpu, cuda,
    mps, mlx) can train here and why not, and the installed library versions."""
    return await run_in_threadpool(system_info)


@router.get("/api/system/doctor", tags=["system"])
async def system_doctor(request: Request) -> dict[str, Any]:
    """`prospect doctor` as JSON: status (the worst of ok / warning / problem), counts, and
    checks [{name, status, detail, action}]: Python, versions against the tested set, the
    device each backend would use and why not a faster one, bf16, memory, swap, disk, hub,
    caffeinate (macOS), API token. Backends are imported in child processes, never here;
    the answer is cached for a minute (checked_at: Unix time)."""
    return await run_in_threadpool(cached_doctor, request)


@router.get("/system", response_class=HTMLResponse, include_in_schema=False)
async def system_page(request: Request) -> HTMLResponse:
    """This machine: the Health panel (filled by its fragment: the checks take seconds)."""
    return page(request, "system.html", nav="system",
                info=await run_in_threadpool(system_info))


@router.get("/fragments/system/doctor", response_class=HTMLResponse, include_in_schema=False)
async def doctor_fragment(request: Request) -> HTMLResponse:
    return page(request, "_doctor_panel.html",
                result=await run_in_threadpool(cached_doctor, request))


@router.get("/fragments/system", response_class=HTMLResponse, include_in_schema=False)
async def system_fragment(request: Request) -> HTMLResponse:
    """The system panel's contents; base.html's panel re-fetches this every few seconds."""
    return page(request, "_system_panel.html", info=await run_in_threadpool(system_info))
