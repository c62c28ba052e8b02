"""HTML pages and the fragments htmx swaps (the Hypermedia Systems contact-app way).

A page includes its fragments; an htmx request gets only the fragment back. Form errors come
back as HTML beside the field. The job page's live parts are driven by the job's SSE stream:
templates/job.html says which events refresh the status card, static/js/job.js draws the
charts and the log tail from the same connection.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from app.db import ROOT, SessionDep
from app.jobs import history as runs
from app.jobs.sparkline import loss_series, sparkline
from app.models import Job, JobStatus
from app.units import fmt_bytes, fmt_count, number
from app.web.job_form import blank_form, knob_value, method_key  # noqa: F401 - job_page uses them

router = APIRouter(include_in_schema=False)


def csrf_context(request: Request) -> dict[str, str]:
    """Every page embeds the server's CSRF token (a meta tag, htmx's header, the form)."""
    return {"csrf_token": getattr(request.app.state, "csrf_token", "")}


templates = Jinja2Templates(directory=ROOT / "templates", context_processors=[csrf_context])

JOBS_PER_PAGE = 25


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


def is_live(job: Job) -> bool:
    """Whether the page needs the job's SSE stream. A final status is only reached through
    the `done` event or after the worker is gone, so everything is in the database by then
    (the stream itself stays open until the worker has exited)."""
    return not job.status.is_final


templates.env.globals.update(
    iso=iso, short_time=short_time, elapsed_s=elapsed_s, duration=duration, percent=percent,
    number=number, bytes_human=fmt_bytes, fmt_bytes=fmt_bytes, fmt_count=fmt_count,
    is_live=is_live, JobStatus=JobStatus,
)


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def not_found(request: Request, job_id: int) -> HTMLResponse:
    return page(request, "not_found.html", 404, message=f"Job {job_id} does not exist.")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


# --- the jobs list ----------------------------------------------------------------------------
def jobs_context(request: Request, session: Session) -> dict[str, Any]:
    """The filtered, sorted page of jobs the URL asks for (app/jobs/history.py), with sparklines."""
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


# The new-job form lives in app/web/pages/new_job.py (its values: app/web/job_form.py); one
# job's page in app/web/pages/job.py.
