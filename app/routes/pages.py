"""HTML pages and the fragments htmx swaps (the Hypermedia Systems contact-app way).

A page includes its fragments; an htmx request gets only the fragment back. Form errors come
back as HTML beside the field. The job page's live parts are driven by the job's SSE stream:
templates/job.html says which events refresh the status card, static/js/job.js draws the
charts and the log tail from the same connection.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlmodel import Session, select
from starlette.datastructures import FormData

from app import runs
from app.db import ROOT, SessionDep
from app.jobs import JobInputError, create_job
from app.models import DatasetEntry, Job, JobCreate, JobStatus, ModelEntry
from app.security import CSRF_FIELD, CSRF_HEADER, csrf_ok
from app.sparkline import loss_series, sparkline
from workers.params import METHODS, Knob, Method, ParamError, method_for

router = APIRouter(include_in_schema=False)


def csrf_context(request: Request) -> dict[str, str]:
    """Every page embeds the server's CSRF token (a meta tag, htmx's header, the form)."""
    return {"csrf_token": getattr(request.app.state, "csrf_token", "")}


templates = Jinja2Templates(directory=ROOT / "templates", context_processors=[csrf_context])

JOBS_PER_PAGE = 25
DEMO_MODEL, DEMO_DATASET = "tiny-demo", "demo-kto"
GROUP_TITLES = {
    "training": "Training", "kto": "KTO loss", "memory": "Memory", "lora": "LoRA adapter",
    "logging": "Logging and checkpoints", "hardware": "Hardware",
}


# --- formatting helpers the templates use -----------------------------------------------------
def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str:
    dt = aware(dt)
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z") if dt else ""


def short_time(dt: datetime | None) -> str:
    dt = aware(dt)
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "—"


def elapsed_s(job: Job) -> float | None:
    start = aware(job.started_at)
    if start is None:
        return None
    end = aware(job.finished_at) or datetime.now(UTC)
    return max(0.0, (end - start).total_seconds())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def percent(job: Job) -> float | None:
    if not job.total_steps or job.total_steps <= 0:
        return None
    if job.status == JobStatus.succeeded:
        return 100.0
    return max(0.0, min(100.0, 100.0 * job.step / job.total_steps))


def number(value: Any) -> str:
    """Numbers as a person would type them: 5e-07, 0.1, 16, 1e+07 only where shorter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int) or value == int(value) and abs(value) < 1e15:
        return str(int(value)) if isinstance(value, int) else f"{value:.1f}"
    return f"{value:.6g}"


def bytes_human(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def is_live(job: Job) -> bool:
    """Whether the page needs the job's SSE stream. A final status is only reached through
    the `done` event or after the worker is gone, so everything is in the database by then
    (the stream itself stays open until the worker has exited)."""
    return not job.status.is_final


templates.env.globals.update(
    iso=iso, short_time=short_time, elapsed_s=elapsed_s, duration=duration, percent=percent,
    number=number, bytes_human=bytes_human, is_live=is_live, JobStatus=JobStatus,
)


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def not_found(request: Request, job_id: int) -> HTMLResponse:
    return page(request, "not_found.html", 404, message=f"Job {job_id} does not exist.")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# --- the jobs list ----------------------------------------------------------------------------
def jobs_context(request: Request, session: Session) -> dict[str, Any]:
    """The filtered, sorted page of jobs the URL asks for (app/runs.py), with sparklines."""
    query, page_no = runs.query_from_params(dict(request.query_params), JOBS_PER_PAGE)
    found = runs.find_jobs(session, query)
    last = max(1, -(-found.total // JOBS_PER_PAGE))
    if page_no > last:  # runs deleted (or a stale link): show the last page there is
        page_no = last
        query = replace(query, offset=(last - 1) * JOBS_PER_PAGE)
        found = runs.find_jobs(session, query)
    series = loss_series(session, [r.job.id for r in found.rows])
    for row in found.rows:
        row.spark = sparkline(series.get(row.job.id, []))
    return {"found": found, "query": query, "page_no": page_no, "pages": last,
            "url_params": runs.url_params, "urlencode": urlencode}


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return page(request, "jobs.html", facets=runs.facets(session), statuses=list(JobStatus),
                **jobs_context(request, session))


@router.get("/fragments/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    """The table body for the same URL query; it re-fetches itself every 3 s."""
    return page(request, "_jobs_body.html", **jobs_context(request, session))


# --- the new-job form -------------------------------------------------------------------------
def method_key(spec: Method) -> str:
    return f"{spec.backend}/{spec.method}"


def knob_groups(spec: Method) -> list[tuple[str, str, list[Knob]]]:
    """(group, title, knobs) in the order the groups first appear in workers.params."""
    groups: dict[str, list[Knob]] = {}
    for knob in spec.knobs:
        groups.setdefault(knob.group, []).append(knob)
    return [(g, GROUP_TITLES.get(g, g.replace("_", " ").capitalize()), knobs)
            for g, knobs in groups.items()]


def knob_value(knob: Knob, value: Any) -> Any:
    """A knob's value as the form shows it: bools stay bools, lists are comma separated."""
    if knob.type is bool:
        return bool(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return number(value)


def blank_form(spec: Method, models: list[ModelEntry], datasets: list[DatasetEntry]) -> dict:
    model_ids = [m.id for m in models]
    dataset_ids = [d.id for d in datasets]
    values: dict[str, Any] = {
        "name": "", "method": method_key(spec), "model_text": "", "dataset_text": "",
        "model_choice": DEMO_MODEL if DEMO_MODEL in model_ids else next(iter(model_ids), ""),
        "dataset_choice": DEMO_DATASET if DEMO_DATASET in dataset_ids
        else next(iter(dataset_ids), ""),
    }
    for knob in spec.knobs:
        values[f"params.{knob.name}"] = knob_value(knob, knob.default)
    return values


def read_form(form: FormData, spec: Method) -> tuple[dict[str, Any], dict[str, Any]]:
    """The form's values as typed (to show again) and the params to validate.

    Every knob is sent: an unchecked box is False, an empty field is None (so the Method
    says "must not be empty" unless the knob is nullable). Coercion is the Method's job.
    """
    values: dict[str, Any] = {k: str(form.get(k, "")) for k in (
        "name", "method", "model_choice", "model_text", "dataset_choice", "dataset_text")}
    params: dict[str, Any] = {}
    for knob in spec.knobs:
        key = f"params.{knob.name}"
        if knob.type is bool:
            values[key] = params[knob.name] = form.get(key) in ("true", "on", "1")
            continue
        raw = str(form.get(key, knob_value(knob, knob.default)))
        values[key] = raw
        params[knob.name] = raw.strip() or None
    return values, params


def form_context(session: Session, spec: Method, values: dict | None = None,
                 errors: dict[str, str] | None = None) -> dict[str, Any]:
    models = list(session.exec(select(ModelEntry).order_by(ModelEntry.id)))
    datasets = list(session.exec(select(DatasetEntry).order_by(DatasetEntry.id)))
    values = values or blank_form(spec, models, datasets)
    errors = errors or {}
    shown = {"name", "method", "model", "dataset"} | {f"params.{k.name}" for k in spec.knobs}
    return {
        "spec": spec, "groups": knob_groups(spec),
        "methods": [m for m in METHODS.values() if m.method != "fuse"],  # fuse: from adapters
        "method_key": method_key, "models": models, "datasets": datasets, "values": values,
        "errors": errors, "other_errors": {f: m for f, m in errors.items() if f not in shown},
    }


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(request: Request, session: SessionDep,
                 from_: Annotated[int | None, Query(alias="from", ge=1, le=2**63 - 1)] = None,
                 model: Annotated[str | None, Query(max_length=1000)] = None) -> HTMLResponse:
    """The form; ``?from=ID`` fills it with job ID's settings (the job page's "clone"),
    ``?model=ID`` picks a model (the models page's "Train")."""
    from app.routes.job_page import prefilled_form  # that module imports this one

    spec, values = prefilled_form(session, from_, model)
    return page(request, "new_job.html", **form_context(session, spec, values))


def _pick_method(value: str) -> Method:
    backend, _, method = value.partition("/")
    try:
        return method_for(backend or "torch", method or "kto")
    except ParamError as exc:
        raise JobInputError("method", exc.message) from None


def _submit(session: Session, form: FormData, settings) -> tuple[Job | None, dict, dict, Method]:
    spec = method_for("torch", "kto")
    values, errors = {}, {}
    try:
        spec = _pick_method(str(form.get("method", "")))
        values, params = read_form(form, spec)
        data = JobCreate(
            name=values["name"], backend=spec.backend, method=spec.method, params=params,
            model=values["model_text"].strip() or values["model_choice"],
            dataset=values["dataset_text"].strip() or values["dataset_choice"],
            force=form.get("force") in ("true", "on", "1"),  # "start anyway" (memory plan)
        )
        return create_job(session, data, settings), values, errors, spec
    except JobInputError as exc:
        errors[exc.field] = exc.message
    except ValidationError as exc:
        for err in exc.errors():
            errors.setdefault(".".join(str(p) for p in err["loc"]), err["msg"])
    if not values:  # the method itself was bad: show the form as it first was
        values, _ = read_form(form, spec)
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
        context = form_context(session, spec, values, errors)
        if is_htmx(request):
            return page(request, "_job_form.html", **context)
        return page(request, "new_job.html", 422, **context)
    request.app.state.supervisor.wake()
    url = f"/jobs/{job.id}"
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


# One job's page lives in app/routes/job_page.py.
