"""The new-job form: the page, the knob swap when the method or model changes, and the submit.

What the values mean (defaults, carry-over, hidden checkbox markers) and what the form draws
are app/web/job_form.py; the plan panel beside the form is app/web/pages/plan.py. Errors come
back beside their fields, all of them at once; htmx gets the form fragment (status 200, so it
swaps), a plain POST the whole page with a 422.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session
from starlette.datastructures import FormData

from app.config import Settings
from app.errors import JobInputError
from app.jobs.service import check_dataset_kind, create_job, resolve_dataset, resolve_model
from app.models import Job, JobCreate
from app.web.deps import DB_INT_MAX, CsrfForm, SessionDep, SettingsDep, SupervisorDep
from app.web.job_form import (
    KNOBS_METHOD,
    KNOBS_MODEL,
    chosen_model,
    dataset_of,
    drawn_for,
    foreign_message,
    form_context,
    pick_method,
    prefilled_form,
    read_form,
    set_knob_defaults,
    swap_values,
)
from app.web.scale_form import scale_facts
from app.web.templating import hx_redirect, is_htmx, page
from contract.knobs import Method, method_for

router = APIRouter(include_in_schema=False)
# The plan panel below the refusal gives the numbers and the one change that fits.
PLAN_REFUSED = ("nothing was started: the memory plan below says this job won't fit. Make the "
                "change it suggests, or tick “Start anyway” and start again.")


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(request: Request, session: SessionDep, settings: SettingsDep,
                 from_: Annotated[int | None, Query(alias="from", ge=1, le=DB_INT_MAX)] = None,
                 model: Annotated[str | None, Query(max_length=1000)] = None,
                 dataset: Annotated[str | None, Query(max_length=1000)] = None,
                 backend: Annotated[str | None, Query(max_length=20)] = None,
                 method: Annotated[str | None, Query(max_length=20)] = None) -> HTMLResponse:
    """The form; ``?from=ID`` fills it with job ID's settings (the job page's "clone"),
    ``?model=ID`` picks a model (the models page's "Train"), ``?dataset=ID`` a dataset (the
    dataset page's "Train on this dataset"); ``?backend=mlx`` picks MLX KTO (``&method=sft``
    its SFT: a suggested model's "Train"), and a knob's
    name fills that knob (``?init_adapter=12&desirable_weight=1.2``: "Train on feedback")."""
    knobs = {k: v[:1000] for k, v in request.query_params.items()
             if k not in ("from", "model", "dataset", "backend", "method")}
    spec, values = prefilled_form(session, from_, model, dataset, backend, knobs, method)
    if values is not None:
        if from_ is None and values.get(KNOBS_MODEL) != chosen_model(values):
            set_knob_defaults(values, spec)  # "Train" on a real model: its defaults
        values[KNOBS_MODEL] = chosen_model(values)  # a clone keeps its job's values
    return page(request, "new_job.html", **form_context(
        session, spec, values, settings=settings,
        scale=scale_facts(request.app.state, settings)))


@router.post("/fragments/job-form/knobs", response_class=HTMLResponse)
async def knobs_fragment(request: Request, session: SessionDep,
                         settings: SettingsDep) -> HTMLResponse:
    """The knob fieldsets for the form's method and model (htmx posts the whole form when
    either changes); the plan panel re-plans once they are in (HX-Trigger-After-Swap)."""
    form = await request.form()
    try:
        spec = pick_method(str(form.get("method", "")))
    except JobInputError:
        spec = method_for("torch", "kto")
    old = drawn_for(form) or spec
    values = swap_values(form, old, spec)
    scale = await run_in_threadpool(scale_facts, request.app.state, settings)
    response = page(request, "_knobs_swap.html", **form_context(
        session, spec, values, settings=settings, scale=scale))
    response.headers["HX-Trigger-After-Swap"] = "knobs-changed"
    return response


def _field_errors(session: Session, settings: Settings, spec: Method, values: dict,
                  params: dict) -> dict[str, str]:
    """Every error the form can show beside a field, found at once (not the first only)."""
    errors: dict[str, str] = {}
    for err in spec.errors(params):
        errors.setdefault(f"params.{err.field}", err.message)
    checks = (("model", lambda: resolve_model(session, chosen_model(values), settings)),
              ("dataset", lambda: resolve_dataset(session, dataset_of(values), settings)),
              ("dataset", lambda: check_dataset_kind(session, dataset_of(values),
                                                     spec.method)))
    for field, check in checks:
        if field in errors:
            continue
        try:
            check()
        except JobInputError as exc:
            errors.setdefault(exc.field, exc.message)
    return errors


def _submit(session: Session, form: FormData,
            settings: Settings) -> tuple[Job | None, dict, dict, Method]:
    spec = method_for("torch", "kto")
    errors: dict[str, str] = {}
    try:
        spec = pick_method(str(form.get("method", "")))
    except JobInputError as exc:
        errors[exc.field] = exc.message
        values, _, _ = read_form(form, spec)
        return None, values, errors, spec
    values, params, foreign = read_form(form, spec)
    if foreign:  # another method's knobs: refuse, and show this method's (carried over)
        old = drawn_for(form)
        values = swap_values(form, old, spec) if old else values
        errors["method"] = foreign_message(spec, foreign, str(form.get(KNOBS_METHOD, "")))
        return None, values, errors, spec
    try:
        data = JobCreate(
            name=values["name"], backend=spec.backend, method=spec.method, params=params,
            model=chosen_model(values), dataset=dataset_of(values),
            force=form.get("force") in ("true", "on", "1"),  # "start anyway" (memory plan)
        )
    except ValidationError as exc:
        for err in exc.errors():
            errors.setdefault(".".join(str(p) for p in err["loc"]), err["msg"])
        return None, values, errors, spec
    errors = _field_errors(session, settings, spec, values, params)
    if errors:
        return None, values, errors, spec
    try:
        return create_job(session, data, settings), values, errors, spec
    except JobInputError as exc:
        errors[exc.field] = PLAN_REFUSED if exc.field == "plan" else exc.message
    return None, values, errors, spec


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_job(request: Request, form: CsrfForm, session: SessionDep,
                     settings: SettingsDep, supervisor: SupervisorDep) -> Response:
    """htmx gets HX-Redirect (or the form again, errors beside the fields, status 200 so it
    swaps); a plain form POST gets a 303 to the job page (or the whole page with a 422)."""
    job, values, errors, spec = await run_in_threadpool(_submit, session, form, settings)
    if job is None:
        scale = await run_in_threadpool(scale_facts, request.app.state, settings)
        context = form_context(session, spec, values, errors, settings, scale)
        if is_htmx(request):
            return page(request, "_job_form.html", **context)
        return page(request, "new_job.html", 422, **context)
    supervisor.wake()
    return hx_redirect(request, f"/jobs/{job.id}")
