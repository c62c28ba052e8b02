"""The machine this server runs on: GET /api/system (JSON) and the system panel fragment.

Both come from app/system.py, which reads memory fresh and caches the slow facts (nvidia-smi,
package versions), so the panel can refresh every few seconds for the cost of reading
/proc/meminfo (or sysctl and vm_stat on a Mac).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from app.routes.pages import page
from app.system import system_info

router = APIRouter()


@router.get("/api/system", tags=["system"])
async def system() -> dict[str, Any]:
    """Memory now (total, available, swap), platform, CUDA devices, which backends (cpu, cuda,
    mps, mlx) can train here and why not, and the installed library versions."""
    return await run_in_threadpool(system_info)


@router.get("/fragments/system", response_class=HTMLResponse, include_in_schema=False)
async def system_fragment(request: Request) -> HTMLResponse:
    """The system panel's contents; base.html's panel re-fetches this every few seconds."""
    return page(request, "_system_panel.html", info=await run_in_threadpool(system_info))
