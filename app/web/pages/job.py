"""One job's page: the status card, live charts, log, config, artifacts and actions.

The page reads everything from the database and the run folder; while the job runs, one SSE
stream (templates/job.html) refreshes the card and feeds static/js/job.js, which draws the
charts. Nothing on the page needs the worker to be alive: a finished job looks the same.
Also here: what "clone" fills the new-job form with (``/jobs/new?from=ID``).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func
from sqlmodel import Session, select

from app.hub.cache import cached_models
from app.jobs.artifacts import list_artifacts
from app.models import DatasetEntry, Event, Job, JobStatus, ModelEntry
from app.units import number
from app.web.deps import JobId, SessionDep
from app.web.job_form import blank_form, knob_value, method_key
from app.web.templating import aware, is_live, not_found, page
from contract.events import CONFIG_FILE
from contract.knobs import Method, ParamError, method_for

router = APIRouter(include_in_schema=False)
CONFIG_SHOWN_MAX = 200_000  # characters of config.json shown on the page


def params_rows(job: Job) -> list[tuple[str, str, bool]]:
    """(name, value, differs from the default) in the Method's knob order."""
    try:
        spec = method_for(job.backend, job.method)
    except ParamError:
        spec = None
    order = [k.name for k in spec.knobs] if spec else []
    names = [n for n in order if n in job.params] + sorted(set(job.params) - set(order))
    rows = []
    for name in names:
        value = job.params[name]
        knob = spec.knob(name) if spec else None
        text = ", ".join(map(str, value)) if isinstance(value, list) else number(value)
        if isinstance(value, bool):
            text = "yes" if value else "no"
        rows.append((name, text, knob is not None and value != knob.default))
    return rows


def worker_config(job: Job) -> str:
    """The config.json the worker was given (everything it ran with), pretty-printed."""
    if not job.run_dir:
        return ""
    try:
        text = (Path(job.run_dir) / CONFIG_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    with contextlib.suppress(json.JSONDecodeError):  # a broken file is shown as written
        text = json.dumps(json.loads(text), indent=2)
    return text[:CONFIG_SHOWN_MAX]


def started_ts(session: Session, job: Job) -> float | None:
    """Unix time the job first started: the memory chart's x axis counts from it. The
    first event's time, not ``started_at``: a resume sets that again, which put every
    sample from before the resume at x = 0."""
    first = session.exec(select(Event.t).where(Event.job_id == job.id)
                         .order_by(Event.seq).limit(1)).first()
    if first is not None:
        return round(first, 3)
    start = aware(job.started_at)
    return round(start.timestamp(), 3) if start else None


def restarts(session: Session, job_id: int) -> list[dict[str, Any]]:
    """Where a resumed run started again: each worker start after the first (its
    ``loading_model`` status event) with its time and the first step it reported, for the
    charts' "resumed" markers."""
    phase = func.json_extract(Event.data, "$.phase")
    starts = session.exec(select(Event.seq, Event.t).where(
        Event.job_id == job_id, Event.type == "status", phase == "loading_model")
        .order_by(Event.seq)).all()
    out = []
    for seq, t in starts[1:]:
        step = session.exec(select(func.json_extract(Event.data, "$.step")).where(
            Event.job_id == job_id, Event.type.in_(("progress", "metric")), Event.seq > seq)
            .order_by(Event.seq).limit(1)).first()
        out.append({"t": round(t, 3), "step": step if isinstance(step, int) else None})
    return out


def actions(job: Job) -> dict[str, bool]:
    """Which action buttons apply to the job as it is now (job.js re-checks after each
    card refresh through the card's data attributes)."""
    final = job.status.is_final
    return {
        "cancel": job.status.is_active and not job.cancel_requested_at,
        "resume": final and job.status != JobStatus.succeeded and bool(job.last_checkpoint),
        "fuse": job.status == JobStatus.succeeded and job.method != "fuse"
        and bool(job.adapter_path) and Path(job.adapter_path).is_dir(),
        "delete": final,
        "clone": job.method != "fuse",
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    live = is_live(job)
    events_url = f"/api/jobs/{job.id}/events?after={job.last_seq}" if live else ""
    return page(request, "job.html", job=job, live=live, events_url=events_url,
                params=params_rows(job), config_text=worker_config(job), can=actions(job),
                artifacts=list_artifacts(session, job), started_ts=started_ts(session, job),
                restarts=restarts(session, job.id))


@router.get("/jobs/{job_id}/card", response_class=HTMLResponse)
def job_card(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    """The status card's contents; the card element itself stays and re-fetches this."""
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    return page(request, "_job_card.html", job=job, can=actions(job))


@router.get("/jobs/{job_id}/artifacts", response_class=HTMLResponse)
def artifacts_fragment(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    """The artifacts panel's contents: refreshed when a checkpoint or artifact event comes."""
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    return page(request, "_job_artifacts.html", job=job, artifacts=list_artifacts(session, job))


@router.get("/jobs/{job_id}/fused", response_class=HTMLResponse)
def fused_fragment(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    """A fuse job's result panel: refreshed when the job ends."""
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    return page(request, "_job_fused.html", job=job)


def clone_values(session: Session, job_id: int) -> tuple[Method, dict[str, Any]] | None:
    """The new-job form's values for a copy of job ``job_id`` (None: no such job, or a fuse).

    The model and dataset go back into the pickers when they are still registered, else into
    the text fields; params the method no longer knows are dropped (the form shows its knobs).
    """
    job = session.get(Job, job_id)
    if job is None:
        return None
    try:
        spec = method_for(job.backend, job.method)
    except ParamError:
        return None
    if spec.method == "fuse":
        return None
    models = list(session.exec(select(ModelEntry)))
    datasets = list(session.exec(select(DatasetEntry)))
    values = blank_form(spec, models, datasets)
    values["method"] = method_key(spec)
    values["name"] = f"{job.name} (copy)"[:200] if job.name else ""
    dataset_ids = {d.id for d in datasets}
    pick_model(values, job.model, models)
    values["dataset_choice"], values["dataset_text"] = (
        (job.dataset, "") if job.dataset in dataset_ids else ("", job.dataset))
    for knob in spec.knobs:
        if knob.name in (job.params or {}):
            values[f"params.{knob.name}"] = knob_value(knob, job.params[knob.name])
    return spec, values


def pick_model(values: dict[str, Any], model: str, models: list[ModelEntry]) -> None:
    """Put ``model`` in the picker when it offers it (registered or in the HF cache), else
    in the text field beside it."""
    offered = {m.id for m in models} | {m["id"] for m in cached_models()}
    values["model_choice"], values["model_text"] = (
        (model, "") if model in offered else ("", model))


def prefilled_form(session: Session, from_job: int | None, model: str | None,
                   dataset: str | None = None) -> tuple[Method, dict[str, Any] | None]:
    """The new-job form's method and values: a clone of ``from_job``, or the blank form with
    ``model`` and/or ``dataset`` picked; (torch KTO, None) means the plain blank form."""
    spec = method_for("torch", "kto")
    cloned = clone_values(session, from_job) if from_job is not None else None
    if cloned is not None:
        return cloned
    model, dataset = (model or "").strip(), (dataset or "").strip()
    if not model and not dataset:
        return spec, None
    models = list(session.exec(select(ModelEntry)))
    datasets = list(session.exec(select(DatasetEntry)))
    values = blank_form(spec, models, datasets)
    if model:
        pick_model(values, model, models)
    if dataset:  # a registered one in the picker, anything else in the text field
        values["dataset_choice"], values["dataset_text"] = (
            (dataset, "") if dataset in {d.id for d in datasets} else ("", dataset))
    return spec, values
