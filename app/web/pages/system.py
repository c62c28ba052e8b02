"""The System page (this machine, and its Health panel filled by a fragment: the checks take
seconds) and the system panel that base.html re-fetches every few seconds. The JSON is
app/web/api/system.py; both read app/system/machine.py and app/system/doctor_cache.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from app.system.doctor_cache import cached_doctor
from app.system.machine import system_info
from app.web.deps import SettingsDep
from app.web.templating import page

router = APIRouter(include_in_schema=False)


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request) -> HTMLResponse:
    """This machine: the Health panel (filled by its fragment: the checks take seconds)."""
    return page(request, "system.html", nav="system",
                info=await run_in_threadpool(system_info))


@router.get("/fragments/system/doctor", response_class=HTMLResponse)
async def doctor_fragment(request: Request, settings: SettingsDep) -> HTMLResponse:
    return page(request, "_doctor_panel.html",
                result=await run_in_threadpool(cached_doctor, settings))


@router.get("/fragments/system", response_class=HTMLResponse)
async def system_fragment(request: Request) -> HTMLResponse:
    """The system panel's contents; base.html's panel re-fetches this every few seconds."""
    return page(request, "_system_panel.html", info=await run_in_threadpool(system_info))
