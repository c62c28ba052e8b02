"""One Jinja environment for every page and fragment, its globals registered once, and the
small response helpers every HTML route uses (a page, the 404 page, "HX-Redirect or 303").

A page includes its fragments; an htmx request gets only the fragment back (the Hypermedia
Systems contact-app way). Every page embeds the server's CSRF token for its forms and htmx.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.db import ROOT
from app.hub.cache import cached_models, label
from app.models import Job, JobStatus
from app.planner.check import form_presets
from app.units import fmt_bytes, fmt_count, number


def csrf_context(request: Request) -> dict[str, str]:
    """Every page embeds the server's CSRF token (a meta tag, htmx's header, the form)."""
    return {"csrf_token": getattr(request.app.state, "csrf_token", "")}


templates = Jinja2Templates(directory=ROOT / "templates", context_processors=[csrf_context])


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
    # The job form's preset select (each marked when its model is not here) and model names.
    plan_presets=form_presets, cached_models=cached_models, model_label=label,
)


# --- responses ---------------------------------------------------------------------------------
def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def not_found(request: Request, job_id: int) -> HTMLResponse:
    return page(request, "not_found.html", 404, message=f"Job {job_id} does not exist.")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def hx_redirect(request: Request, url: str) -> Response:
    """Where a form post leads: htmx follows an HX-Redirect (a 200, or it would not read the
    header); a plain form post gets a 303 to the same place."""
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)
