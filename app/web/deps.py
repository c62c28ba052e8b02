"""What route handlers ask FastAPI for: the session, the settings, the supervisor, a job by
its id (404 when there is none), and a form whose CSRF token was checked.

Annotated aliases, as the FastAPI full-stack template does: a handler's signature says what it
needs (``job: JobDep``) and the lookups live here once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlmodel import Session
from starlette.datastructures import FormData

from app.config import Settings
from app.db import SessionDep
from app.jobs.supervisor import Supervisor
from app.models import Job
from app.security import CSRF_FIELD, CSRF_HEADER, csrf_ok

__all__ = ["CsrfForm", "DB_INT_MAX", "DatasetId", "JobDep", "JobId", "SessionDep", "SettingsDep",
           "SupervisorDep", "FormRefused", "get_job"]

DB_INT_MAX = 2**63 - 1  # SQLite's INTEGER: a larger number in a query is a 422, not a 500
JobId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="The job's id.")]
DatasetId = Annotated[str, Path(min_length=1, max_length=200)]

FORM_REFUSED = (
    "This form did not come from this Prospect server's own page (its CSRF token is missing, "
    "or the server restarted since the page was loaded). Reload the page and submit again.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_supervisor(request: Request) -> Supervisor:
    return request.app.state.supervisor


SettingsDep = Annotated[Settings, Depends(get_settings)]
SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return job


def job_by_id(job_id: JobId, session: SessionDep) -> Job:
    return get_job(session, job_id)


JobDep = Annotated[Job, Depends(job_by_id)]


class FormRefused(Exception):
    """A page's form post without this server's CSRF token (app.main answers 403 with the
    page that says what to do)."""

    message = FORM_REFUSED


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token (header for htmx, hidden field otherwise) is this
    server's; otherwise FormRefused."""
    form = await request.form()
    given = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD, ""))
    if not csrf_ok(given, request.app.state.csrf_token):
        raise FormRefused()
    return form


CsrfForm = Annotated[FormData, Depends(checked_form)]
