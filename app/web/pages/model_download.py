"""The Models page's Add model form and a download's progress fragment (issue 15).

templates/_model_download.html is the form: a hub id and an optional revision. *Check* asks
the hub (POST /models/download/check) and shows what would come: the files and their size,
the free disk of the Hugging Face cache, the memory planner's verdict for training the model
here; *Download* (POST /models/download) starts the job and sends the browser to its page
(HX-Redirect). The work is app/jobs/hub_download.py, the same as POST /api/models/download.
htmx swaps only a 2xx answer, so a refusal comes back with a 200 as the form showing it; a
caller without htmx gets the refusal's own status.

GET /jobs/{id}/download is the job page's download panel (templates/_download_progress.html):
bytes and files done of total, speed, ETA, from the job's latest ``progress`` event.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, select

from app.errors import JobInputError
from app.hub.download import HubRefusal
from app.jobs.hub_download import precheck, start_download
from app.models import Event, Job
from app.web.deps import CsrfForm, JobId, SessionDep, SettingsDep, SupervisorDep
from app.web.templating import hx_redirect, is_htmx, not_found, page

router = APIRouter(include_in_schema=False, tags=["models"])
FORM = "_model_download.html"


def _values(form) -> dict[str, str]:
    return {k: str(form.get(k, "")).strip()[:300] for k in ("repo_id", "revision")}


def _refused(request: Request, values: dict, exc: Exception) -> HTMLResponse:
    if isinstance(exc, JobInputError):
        status, errors = exc.status_code, {exc.field: exc.message}
    else:
        status, errors = exc.status, {"hub": exc.message}
    return page(request, FORM, 200 if is_htmx(request) else status, download_form=values,
                download_errors=errors)


@router.get("/models/download", response_class=HTMLResponse)
def download_form(request: Request) -> HTMLResponse:
    """The empty form (helper for pages that load it with hx-get)."""
    return page(request, FORM, download_form={}, download_errors={})


@router.post("/models/download/check", response_class=HTMLResponse)
async def check(request: Request, form: CsrfForm, session: SessionDep) -> HTMLResponse:
    values = _values(form)
    try:
        found = await run_in_threadpool(precheck, session, values["repo_id"],
                                        values["revision"] or None)
    except (JobInputError, HubRefusal) as exc:
        return _refused(request, values, exc)
    return page(request, FORM, download_form=values, download_errors={},
                download_check=found)


@router.post("/models/download", response_class=HTMLResponse)
async def download(request: Request, form: CsrfForm, session: SessionDep,
                   settings: SettingsDep, supervisor: SupervisorDep) -> Response:
    values = _values(form)
    try:
        status, answer = await run_in_threadpool(start_download, session, settings,
                                                 values["repo_id"], values["revision"] or None)
    except (JobInputError, HubRefusal) as exc:
        return _refused(request, values, exc)
    if status == 200:  # in the cache already
        return page(request, FORM, download_form=values, download_errors={},
                    download_check=answer["check"], download_cached=answer)
    supervisor.wake()
    return hx_redirect(request, f"/jobs/{answer['job'].id}")


def latest(session: Session, job_id: int, kind: str) -> dict[str, Any] | None:
    row = session.exec(select(Event.data).where(Event.job_id == job_id, Event.type == kind)
                       .order_by(Event.seq.desc()).limit(1)).first()
    return row if isinstance(row, dict) else None


@router.get("/jobs/{job_id}/download", response_class=HTMLResponse)
def progress(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id)
    if job is None or job.method != "download":
        return not_found(request, job_id)
    return page(request, "_download_progress.html", job=job,
                p=latest(session, job_id, "progress"),
                artifact=latest(session, job_id, "artifact"))
