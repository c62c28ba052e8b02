"""The new-job form's plan panel (the memory plan and the run's length for the form's values)
and the form filled from a preset. The plan itself is app/jobs/planning.py, as for
``POST /api/plan``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlmodel import Session
from starlette.datastructures import FormData

from app.config import Settings
from app.errors import JobInputError
from app.jobs.planning import plan_for
from app.planner.check import preset
from app.planner.run_length import run_length
from app.planner.tune import larger_batch_hint
from app.web.deps import SessionDep, SettingsDep
from app.web.job_form import (
    blank_form,
    chosen_model,
    dataset_of,
    effective_batch_of,
    form_context,
    knob_value,
    pick_method,
    read_form,
    set_knob_defaults,
)
from app.web.scale_form import scale_facts
from app.web.templating import page
from contract.knobs import method_for

router = APIRouter(include_in_schema=False)


def _form_plan(session: Session, settings: Settings,
               form: FormData) -> tuple[dict, dict | None, dict | None]:
    """The plan, the run's length and the effective batch for the form's values. Another
    method's knobs (a swap still on its way) are left out here: the submit refuses them."""
    length = effective = None
    try:
        spec = pick_method(str(form.get("method", "")))
        values, params, _ = read_form(form, spec)
        effective = effective_batch_of(spec, values)
        length = run_length(session, spec, params, chosen_model(values), dataset_of(values))
        return plan_for(session, settings, spec.backend, spec.method, chosen_model(values),
                        params), length, effective
    except JobInputError as exc:
        return {"verdict": "unknown", "message": f"{exc.field}: {exc.message}"}, length, \
            effective


@router.post("/fragments/plan", response_class=HTMLResponse)
async def plan_fragment(request: Request, session: SessionDep,
                        settings: SettingsDep) -> HTMLResponse:
    """The plan panel for the form's current values (htmx posts the whole form)."""
    form = await request.form()
    result, length, effective = await run_in_threadpool(_form_plan, session, settings, form)
    hint = larger_batch_hint(result, effective["effective"]) if effective else None
    return page(request, "_plan.html", plan=result, length=length, effective=effective,
                hint=hint)


@router.get("/fragments/plan/preset", response_class=HTMLResponse)
def preset_form(request: Request, session: SessionDep, settings: SettingsDep,
                preset_id: str = "") -> HTMLResponse:
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
    context = form_context(session, spec, values, settings=settings,
                           scale=scale_facts(request.app.state, settings))
    return page(request, "_job_form.html", **context, preset_id=preset_id)
