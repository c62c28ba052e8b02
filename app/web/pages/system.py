"""The System page (this machine, its Health panel filled by a fragment: the checks take
seconds, and the Hosts setting) and the system panel that base.html re-fetches every few
seconds. The JSON is app/web/api/system.py and app/web/api/settings.py; they read
app/system/ (machine facts, GPUs in use) and app/hosts.py (the Hosts setting).

The Hosts forms swap the section (templates/_hosts_section.html): htmx swaps only a 2xx
answer, so a refusal comes back with a 200 beside its field; a caller without htmx gets a
422 with the same section, and after a change a 303 back to the page.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from app.hosts import hosts_path, read_hosts, write_hosts
from app.system.doctor_cache import cached_doctor
from app.system.gpus import system_info_with_gpus
from app.web.deps import CsrfForm, SettingsDep
from app.web.templating import hx_redirect, is_htmx, page
from contract.knob_core import ParamError

router = APIRouter(include_in_schema=False)
HOST_FIELDS = ("name", "ssh", "ips")


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    """This machine: the Health panel (filled by its fragment: the checks take seconds) and
    the Hosts setting."""
    info = await run_in_threadpool(system_info_with_gpus, request.app.state)
    return page(request, "system.html", nav="system", info=info, **hosts_context(settings))


@router.get("/fragments/system/doctor", response_class=HTMLResponse)
async def doctor_fragment(request: Request, settings: SettingsDep) -> HTMLResponse:
    return page(request, "_doctor_panel.html",
                result=await run_in_threadpool(cached_doctor, settings))


@router.get("/fragments/system", response_class=HTMLResponse)
async def system_fragment(request: Request) -> HTMLResponse:
    """The system panel's contents; base.html's panel re-fetches this every few seconds."""
    info = await run_in_threadpool(system_info_with_gpus, request.app.state)
    return page(request, "_system_panel.html", info=info)


# --- the Hosts section -----------------------------------------------------------------------

def hosts_context(settings, errors: dict[str, str] | None = None,
                  form: dict[str, str] | None = None, json_text: str | None = None) -> dict:
    """The section's context; a hand-broken hosts.json shows its error and its raw text in
    the JSON editor, where it can be fixed."""
    errors = dict(errors or {})
    try:
        hosts = read_hosts(settings)
    except ParamError as exc:
        hosts = {}
        errors.setdefault("json", exc.message)
        if json_text is None:
            json_text = hosts_path(settings).read_text(encoding="utf-8", errors="replace")
    if json_text is None:
        json_text = json.dumps(hosts or {"backend": "ring", "envs": [], "hosts": []}, indent=1)
    return {"hosts": hosts, "hosts_errors": errors, "hosts_form": form or {},
            "hosts_json": json_text}


def _section(request: Request, settings, status: int = 200, **context: Any) -> Response:
    if status == 200:
        if not is_htmx(request):
            return hx_redirect(request, "/system#hosts")
        return page(request, "_hosts_section.html", **hosts_context(settings))
    return page(request, "_hosts_section.html", 200 if is_htmx(request) else status,
                **hosts_context(settings, **context))


def _save(settings, change) -> None:
    """Apply ``change`` to the saved setting and save it (ParamError when either fails)."""
    current = read_hosts(settings) or {"backend": "ring", "envs": [], "hosts": []}
    write_hosts(settings, change(current))


@router.post("/system/hosts/add", response_class=HTMLResponse)
async def add_host(request: Request, form: CsrfForm, settings: SettingsDep) -> Response:
    values = {k: str(form.get(k, "")).strip() for k in HOST_FIELDS}
    new = {"name": values["name"], "ssh": values["ssh"],
           "ips": [ip for ip in re.split(r"[,\s]+", values["ips"]) if ip]}
    count = -1  # the new host's index, once the saved setting is read
    try:
        count = len(read_hosts(settings).get("hosts", []))
        _save(settings, lambda cur: {**cur, "hosts": [*cur["hosts"], new]})
    except ParamError as exc:
        # Errors about the new host go beside its field; any other, above the form.
        own = re.match(rf"hosts\[{count}\]\.(\w+)", exc.field)
        field = own.group(1) if own and own.group(1) in HOST_FIELDS else "form"
        message = exc.message if field != "form" else f"{exc.field}: {exc.message}"
        return _section(request, settings, 422, errors={field: message}, form=values)
    return _section(request, settings)


@router.post("/system/hosts/remove", response_class=HTMLResponse)
async def remove_host(request: Request, form: CsrfForm, settings: SettingsDep) -> Response:
    name = str(form.get("name", ""))
    try:
        _save(settings, lambda cur: {**cur, "hosts": [h for h in cur["hosts"]
                                                      if h["name"] != name]})
    except ParamError as exc:
        return _section(request, settings, 422, errors={"form": f"{exc.field}: {exc.message}"})
    return _section(request, settings)


@router.post("/system/hosts/backend", response_class=HTMLResponse)
async def set_backend(request: Request, form: CsrfForm, settings: SettingsDep) -> Response:
    backend = str(form.get("backend", ""))
    try:
        _save(settings, lambda cur: {**cur, "backend": backend})
    except ParamError as exc:
        message = exc.message if exc.field == "backend" else f"{exc.field}: {exc.message}"
        return _section(request, settings, 422, errors={"backend": message})
    return _section(request, settings)


@router.post("/system/hosts/json", response_class=HTMLResponse)
async def save_json(request: Request, form: CsrfForm, settings: SettingsDep) -> Response:
    text = str(form.get("json", ""))
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _section(request, settings, 422, errors={"json": f"not valid JSON: {exc}"},
                        json_text=text)
    try:
        write_hosts(settings, data)
    except ParamError as exc:
        return _section(request, settings, 422, errors={"json": f"{exc.field}: "
                                                        f"{exc.message}"}, json_text=text)
    return _section(request, settings)
