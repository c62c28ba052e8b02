"""The new-job form: the page, the knob swap when the method or model changes, and the submit.

What the values mean (defaults, carry-over, hidden checkbox markers) is app/web/job_form.py; the
plan panel beside the form is app/web/api/plan.py. Errors come back beside their fields, all
of them at once; htmx gets the form fragment (status 200, so it swaps), a plain POST the
whole page with a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, select
from starlette.datastructures import FormData

from app.db import SessionDep
from app.errors import JobInputError
from app.hub.cache import downloads_allowed, missing_model
from app.jobs.service import (
    check_dataset_kind,
    create_job,
    resolve_dataset,
    resolve_model,
)
from app.models import DatasetEntry, Job, JobCreate, ModelEntry
from app.security import CSRF_FIELD, CSRF_HEADER, csrf_ok
from app.web.job_form import (
    DEMO_DEFAULTS,
    KNOBS_METHOD,
    KNOBS_MODEL,
    blank_form,
    chosen_model,
    foreign_message,
    is_demo,
    knob_groups,
    method_key,
    read_form,
    set_knob_defaults,
    swap_values,
)
from app.web.pages.jobs import is_htmx, page
from contract.knobs import METHODS, Method, ParamError, method_for
from contract.model_ref import hub_id_problem, is_folder_path

router = APIRouter(include_in_schema=False)
# The plan panel below the refusal gives the numbers and the one change that fits.
PLAN_REFUSED = ("nothing was started: the memory plan below says this job won't fit. Make the "
                "change it suggests, or tick “Start anyway” and start again.")
METHOD_HELP = {
    "torch/kto": "TRL's KTOTrainer on PyTorch with a LoRA adapter (CUDA, MPS or CPU).",
    "mlx/sft": "mlx-lm's LoRA fine-tuning on the completions (supervised), on Apple silicon "
               "or MLX's CPU build on Linux.",
    "mlx/kto": "KTO on MLX with a LoRA adapter (the loss of TRL's KTOTrainer, for mlx-lm), "
               "on Apple silicon or MLX's CPU build on Linux.",
}


def model_status(session: Session, model: str, settings) -> dict[str, Any] | None:
    """What to do when the chosen model is a hub id that is not on this machine."""
    model = model.strip()
    if not model or is_folder_path(model) or hub_id_problem(model) \
            or session.get(ModelEntry, model) is not None:
        return None
    missing = missing_model(model)
    if missing:
        missing["will_download"] = bool(settings) and downloads_allowed(settings.allow_downloads)
    return missing


def form_context(session: Session, spec: Method, values: dict | None = None,
                 errors: dict[str, str] | None = None, settings=None) -> dict[str, Any]:
    models = list(session.exec(select(ModelEntry).order_by(ModelEntry.id)))
    datasets = list(session.exec(select(DatasetEntry).order_by(DatasetEntry.id)))
    values = values or blank_form(spec, models, datasets)
    errors = errors or {}
    shown = {"name", "method", "model", "dataset"} | {f"params.{k.name}" for k in spec.knobs}
    return {
        "spec": spec, "groups": knob_groups(spec), "method_help": METHOD_HELP,
        "methods": [m for m in METHODS.values() if m.method != "fuse"],  # fuse: from adapters
        "method_key": method_key, "models": models, "datasets": datasets, "values": values,
        "demo_defaults": is_demo(chosen_model(values)),
        "demo_values": DEMO_DEFAULTS.get((spec.backend, spec.method), {})
        if is_demo(chosen_model(values)) else {},
        "model_missing": model_status(session, chosen_model(values), settings),
        "errors": errors, "other_errors": {f: m for f, m in errors.items() if f not in shown},
    }


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(request: Request, session: SessionDep,
                 from_: Annotated[int | None, Query(alias="from", ge=1, le=2**63 - 1)] = None,
                 model: Annotated[str | None, Query(max_length=1000)] = None,
                 dataset: Annotated[str | None, Query(max_length=1000)] = None) -> HTMLResponse:
    """The form; ``?from=ID`` fills it with job ID's settings (the job page's "clone"),
    ``?model=ID`` picks a model (the models page's "Train"), ``?dataset=ID`` a dataset (the
    dataset page's "Train on this dataset")."""
    from app.web.pages.job import prefilled_form  # that module imports app.web.pages.jobs

    spec, values = prefilled_form(session, from_, model, dataset)
    if values is not None:
        if from_ is None and values.get(KNOBS_MODEL) != chosen_model(values):
            set_knob_defaults(values, spec)  # "Train" on a real model: its defaults
        values[KNOBS_MODEL] = chosen_model(values)  # a clone keeps its job's values
    return page(request, "new_job.html", **form_context(session, spec, values,
                                                        settings=request.app.state.settings))


def pick_method(value: str) -> Method:
    backend, _, method = value.partition("/")
    try:
        return method_for(backend or "torch", method or "kto")
    except ParamError as exc:
        raise JobInputError("method", exc.message) from None


def drawn_for(form: FormData) -> Method | None:
    """The method whose knobs the form showed (its hidden marker), if it names one."""
    try:
        return pick_method(str(form.get(KNOBS_METHOD, "")))
    except JobInputError:
        return None


@router.post("/fragments/job-form/knobs", response_class=HTMLResponse)
async def knobs_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """The knob fieldsets for the form's method and model (htmx posts the whole form when
    either changes); the plan panel re-plans once they are in (HX-Trigger-After-Swap)."""
    form = await request.form()
    try:
        spec = pick_method(str(form.get("method", "")))
    except JobInputError:
        spec = method_for("torch", "kto")
    old = drawn_for(form) or spec
    values = swap_values(form, old, spec)
    response = page(request, "_knobs_swap.html", **form_context(
        session, spec, values, settings=request.app.state.settings))
    response.headers["HX-Trigger-After-Swap"] = "knobs-changed"
    return response


def _field_errors(session: Session, settings, spec: Method, values: dict,
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


def dataset_of(values: dict) -> str:
    return values["dataset_text"].strip() or values["dataset_choice"]


def _submit(session: Session, form: FormData, settings) -> tuple[Job | None, dict, dict, Method]:
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
async def submit_job(request: Request, session: SessionDep) -> Response:
    """htmx gets HX-Redirect (or the form again, errors beside the fields, status 200 so it
    swaps); a plain form POST gets a 303 to the job page (or the whole page with a 422)."""
    form = await request.form()
    given = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD, ""))
    if not csrf_ok(given, request.app.state.csrf_token):
        return page(request, "not_found.html", 403, title="Form refused", message=(
            "This form did not come from this Prospect server's own page (its CSRF token is "
            "missing, or the server restarted since the page was loaded). Reload the New job "
            "page and submit again."))
    job, values, errors, spec = await run_in_threadpool(
        _submit, session, form, request.app.state.settings)
    if job is None:
        context = form_context(session, spec, values, errors, request.app.state.settings)
        if is_htmx(request):
            return page(request, "_job_form.html", **context)
        return page(request, "new_job.html", 422, **context)
    request.app.state.supervisor.wake()
    url = f"/jobs/{job.id}"
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)
