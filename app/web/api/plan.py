"""The memory planner over HTTP: ``POST /api/plan`` for scripts, fragments for the job form.

A plan needs the model and the knobs, not the dataset: the body is a job body (as for
``POST /api/jobs``) and the name, dataset and force fields are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session
from starlette.datastructures import FormData

from app.db import SessionDep
from app.errors import JobInputError
from app.hub.cache import downloads_allowed
from app.jobs.service import resolve_model
from app.planner.check import form_presets, plan_job, preset, presets
from app.web.job_form import (
    blank_form,
    chosen_model,
    knob_value,
    read_form,
    run_length,
    set_knob_defaults,
)
from app.web.pages.jobs import page, templates
from app.web.pages.new_job import form_context, pick_method
from contract.knobs import ParamError, method_for

router = APIRouter(tags=["plan"])
# The job form draws the preset select (each marked when its model is not here) from this.
templates.env.globals.update(plan_presets=form_presets)


class PlanRequest(BaseModel):
    """A job body; only backend, method, model and params matter to the plan."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    backend: str = "torch"
    method: str = "kto"
    model: str
    dataset: str = ""
    params: dict[str, Any] = {}
    force: bool = False


def _plan(session: Session, settings, backend: str, method: str, model: str,
          params: Any) -> dict[str, Any]:
    """Validate like a job submission (same 422s), then plan."""
    try:
        spec = method_for(backend, method)
    except ParamError as exc:
        raise JobInputError("method", exc.message) from None
    if spec.method == "fuse":
        raise JobInputError("method", "fusing trains nothing: there is no plan to make; "
                            "use kto or sft")
    errors = spec.errors(params)
    if errors:
        raise JobInputError(f"params.{errors[0].field}", errors[0].message)
    full = spec.validate(params)
    path = resolve_model(session, model, settings, must_be_here=False)  # it may say "missing"
    result = plan_job(path, backend, method, full)
    if result.get("model_missing"):  # refused at submit, unless workers may download it now
        result["model_missing"]["will_download"] = downloads_allowed(settings.allow_downloads)
    return {"backend": backend, "method": method, "model": model, "params": full, **result}


@router.post("/api/plan")
async def api_plan(body: PlanRequest, request: Request, session: SessionDep) -> dict[str, Any]:
    """Peak memory estimate, broken down, against this machine's budget: verdict (fits,
    tight, won't fit, or unknown when the model cannot be read) and, unless it fits, the
    first change that makes it fit."""
    return await run_in_threadpool(_plan, session, request.app.state.settings, body.backend,
                                   body.method, body.model, body.params)


@router.get("/api/plan/presets")
def api_presets() -> list[dict[str, Any]]:
    """Starting points from the seed guide's tables (an M4 with 24 GiB), both backends."""
    return presets()


# --- the job form's plan panel -------------------------------------------------------------
def _form_plan(session: Session, settings, form: FormData) -> tuple[dict, dict | None]:
    """The plan and the run's length for the form's values. Another method's knobs (a swap
    still on its way) are left out here: the submit refuses them."""
    length = None
    try:
        spec = pick_method(str(form.get("method", "")))
        values, params, _ = read_form(form, spec)
        length = run_length(session, spec, values, params)
        return _plan(session, settings, spec.backend, spec.method, chosen_model(values),
                     params), length
    except JobInputError as exc:
        return {"verdict": "unknown", "message": f"{exc.field}: {exc.message}"}, length


@router.post("/fragments/plan", response_class=HTMLResponse, include_in_schema=False)
async def plan_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """The plan panel for the form's current values (htmx posts the whole form)."""
    form = await request.form()
    result, length = await run_in_threadpool(_form_plan, session,
                                             request.app.state.settings, form)
    return page(request, "_plan.html", plan=result, length=length)


@router.get("/fragments/plan/preset", response_class=HTMLResponse, include_in_schema=False)
def preset_form(request: Request, session: SessionDep, preset_id: str = "") -> HTMLResponse:
    """The job form again, filled with a preset's backend, model and knobs."""
    chosen = preset(preset_id)
    spec = method_for("torch", "kto") if chosen is None else \
        method_for(chosen["backend"], chosen["method"])
    context = form_context(session, spec)
    values = context["values"] if chosen is None else \
        blank_form(spec, context["models"], context["datasets"])
    if chosen is not None:
        values.update({"model_text": chosen["model"], "model_choice": ""})
        set_knob_defaults(values, spec)  # a real model: the seed guide's defaults, then its own
        for name, value in chosen["params"].items():
            knob = spec.knob(name)
            if knob is not None:
                values[f"params.{name}"] = knob_value(knob, value)
    context = form_context(session, spec, values, settings=request.app.state.settings)
    return page(request, "_job_form.html", **context, preset_id=preset_id)
