"""One job's page: the status card, live charts, log, config, artifacts and actions.

The page reads everything from the database and the run folder; while the job runs, one SSE
stream (templates/job.html) refreshes the card and feeds static/js/job.js, which draws the
charts. Nothing on the page needs the worker to be alive: a finished job looks the same.

The action bar's buttons (Cancel, Resume, Fuse, Delete) post here with htmx and the page's
CSRF header; each calls the service the REST API calls (app/jobs/lifecycle.py,
app/jobs/adapters.py) and answers with the card fragment the live refresh also swaps in,
the action bar for the job's new status with it, or with HX-Redirect where the action leads
to another page. A refusal comes back in the fragment, not as an alert.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func
from sqlmodel import Session, select

from app.arena.service import latest_for_run
from app.errors import JobInputError
from app.jobs.adapters import fuse_adapter
from app.jobs.artifacts import list_artifacts
from app.jobs.lifecycle import delete_job, request_cancel, request_resume
from app.jobs.scale_checks import resume_params
from app.jobs.tuning import tuning_view
from app.models import Event, Job, JobStatus
from app.units import number
from app.web.deps import CsrfForm, JobId, SessionDep, SettingsDep, SupervisorDep
from app.web.templating import aware, hx_redirect, is_htmx, is_live, not_found, page
from contract.events import CONFIG_FILE
from contract.knobs import ParamError, method_for

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


# a fuse or a convert makes a model, a generate job answers prompts, a download fetches one
NOT_TRAINING = ("fuse", "generate", "download", "convert")


def actions(job: Job) -> dict[str, bool]:
    """Which action buttons apply to the job as it is now (templates/_job_actions.html shows
    only those, on the page and with every card fragment). A generate job (an arena's
    answers) resumes without a checkpoint: its worker skips the answers already written."""
    final = job.status.is_final
    trains = job.method not in NOT_TRAINING
    adapter = job.status == JobStatus.succeeded and trains and bool(job.adapter_path)
    return {
        "cancel": job.status.is_active and not job.cancel_requested_at,
        "resume": final and job.status != JobStatus.succeeded
        and (bool(job.last_checkpoint) or job.method in ("generate", "download")),
        "fuse": adapter and Path(job.adapter_path).is_dir(),
        "delete": final,
        "clone": trains,
        "try_it": adapter,
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
                restarts=restarts(session, job.id),
                tuning=tuning_view(job),
                # Asked for only when there is one: a 404 would be a console error.
                has_arena=latest_for_run(session, job) is not None)


@router.get("/jobs/{job_id}/card", response_class=HTMLResponse)
def job_card(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    """The status card's contents; the card element itself stays and re-fetches this."""
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    return card(request, job)


def card(request: Request, job: Job, answered: bool = False, error: str | None = None,
         status_code: int = 200) -> HTMLResponse:
    """The card fragment with the action bar out of band; ``answered``: an action's answer,
    which also sets (or clears) the refusal under the page head. htmx swaps only a 2xx
    answer, so it gets a refusal with a 200, as the dataset forms do; any other caller gets
    the refusal's own status."""
    code = status_code if error and not is_htmx(request) else 200
    return page(request, "_job_card.html", code, job=job, can=actions(job), oob=True,
                answered=answered, error=error)


@router.get("/jobs/{job_id}/tuning", response_class=HTMLResponse)
def tuning_fragment(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    """The auto-tuning card (empty until the worker's `tune` event is in)."""
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    return page(request, "_tune_card.html", tuning=tuning_view(job))


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


# --- actions: the action bar's buttons (templates/_job_actions.html) ----------------------------
def act(request: Request, session: Session, job_id: int, label: str,
        action: Callable[[Job], Response]) -> Response:
    """Run ``action`` on job ``job_id``; a refusal (409 the job's status does not allow it,
    422 its inputs are gone …) comes back in the card, which shows the job as it is now."""
    job = session.get(Job, job_id)
    if job is None:
        return gone(request, job_id)
    try:
        return action(job)
    except (JobInputError, HTTPException) as exc:
        message = exc.message if isinstance(exc, JobInputError) else str(exc.detail)
        session.rollback()  # nothing of a refused action is kept; the row is read again
        job = session.get(Job, job_id)
        if job is None:  # deleted meanwhile
            return gone(request, job_id)
        return card(request, job, True, f"{label} failed: {message}", exc.status_code)


def gone(request: Request, job_id: int) -> Response:
    """No such job (any more): htmx goes to its page, which says so."""
    return hx_redirect(request, f"/jobs/{job_id}") if is_htmx(request) \
        else not_found(request, job_id)


@router.post("/jobs/{job_id}/cancel", response_class=HTMLResponse)
def cancel_action(job_id: JobId, request: Request, session: SessionDep,
                  supervisor: SupervisorDep, _form: CsrfForm) -> Response:
    """Cancel: the card shows "cancelling" (a running worker saves a checkpoint first)."""
    def cancel(job: Job) -> Response:
        job = request_cancel(session, job)
        if job.status.is_active:  # as POST /api/jobs/{id}/cancel: signal the worker now
            supervisor.cancel_now(job)
        return card(request, job, answered=True)

    return act(request, session, job_id, "Cancel", cancel)


@router.post("/jobs/{job_id}/resume", response_class=HTMLResponse)
def resume_action(job_id: JobId, request: Request, session: SessionDep,
                  settings: SettingsDep, supervisor: SupervisorDep,
                  _form: CsrfForm) -> Response:
    """Resume: the page loads again, so its event stream starts again. The machine is
    checked as at submission (its GPUs or the Hosts setting may have changed since)."""
    def resume(job: Job) -> Response:
        request_resume(session, job, resume_params(job, {}, settings))
        supervisor.wake()
        return hx_redirect(request, f"/jobs/{job_id}")

    return act(request, session, job_id, "Resume", resume)


@router.post("/jobs/{job_id}/fuse", response_class=HTMLResponse)
def fuse_action(job_id: JobId, request: Request, session: SessionDep, settings: SettingsDep,
                supervisor: SupervisorDep, _form: CsrfForm) -> Response:
    """Fuse: a new job merges the adapter; the browser goes to its page."""
    def fuse(job: Job) -> Response:
        fused = fuse_adapter(session, job, settings)
        supervisor.wake()
        return hx_redirect(request, f"/jobs/{fused.id}")

    return act(request, session, job_id, "Fuse", fuse)


@router.delete("/jobs/{job_id}", response_class=HTMLResponse)
def delete_action(job_id: JobId, request: Request, session: SessionDep, settings: SettingsDep,
                  _form: CsrfForm) -> Response:
    """Delete: the job, its run folder and everything in it go; the browser goes to the
    jobs list."""
    def delete(job: Job) -> Response:
        delete_job(session, job, settings)
        return hx_redirect(request, "/")

    return act(request, session, job_id, "Delete", delete)
