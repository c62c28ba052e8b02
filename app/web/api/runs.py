"""Run history: edit a run's name, notes and tags; export its metrics; compare runs.

REST under /api (PATCH /api/jobs/{id}, /api/jobs/{id}/metrics.csv|json, /api/compare) and
the pages that use them (/compare, the job page's notes block). The jobs list itself stays
in app/web/pages/jobs.py, its query logic in app/jobs/history.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, select

from app.db import SessionDep
from app.errors import JobInputError
from app.jobs.compare import MAX_RUNS, metric_names, parse_ids, settings_diff
from app.jobs.history import (
    NOTES_MAX,
    TAGS_MAX,
    JobQuery,
    RunEditError,
    apply_edit,
    final_loss_expr,
    list_jobs,
)
from app.jobs.metrics import columnar
from app.models import Job, JobPublic
from app.security import CSRF_FIELD, CSRF_HEADER, csrf_ok
from app.web.api.jobs import JobId, get_job
from app.web.pages.jobs import is_htmx, not_found, page

api = APIRouter(prefix="/api")
router = APIRouter(include_in_schema=False)
PICKER_SIZE = 100


class JobEdit(BaseModel):
    """What PATCH /api/jobs/{id} may change; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, description="At most 200 characters.")
    notes: str | None = Field(default=None, description=f"At most {NOTES_MAX} characters.")
    tags: list[str] | None = Field(default=None, description=(
        f"At most {TAGS_MAX} tags of 1-32 letters, digits and _ . : / + -; replaces the "
        "run's tags."))


def _edit(session: Session, job: Job, **changes) -> Job:
    try:
        apply_edit(job, **changes)
    except RunEditError as exc:
        raise JobInputError(exc.field, exc.message) from None
    session.add(job)
    session.commit()
    session.refresh(job)
    return job


@api.patch("/jobs/{job_id}", response_model=JobPublic)
def edit_job(job_id: JobId, data: JobEdit, session: SessionDep) -> Job:
    """Rename a run, or set its notes or tags (any state, even while it trains)."""
    return _edit(session, get_job(session, job_id), **data.model_dump(exclude_unset=True))


# --- export ----------------------------------------------------------------------------------
def _filename(job: Job, ext: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.name).strip("-.")[:60]
    return f"job-{job.id}{'-' + slug if slug else ''}-metrics.{ext}"


def _attachment(job: Job, ext: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{_filename(job, ext)}"'}


def _csv(cols: dict[str, list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(cols)
    writer.writerow(names)
    for i in range(len(cols["step"])):
        # repr keeps every digit of a float; an empty cell is a metric not logged at that step
        writer.writerow(["" if (v := cols[n][i]) is None else repr(v) for n in names])
    return buf.getvalue()


@api.get("/jobs/{job_id}/metrics.csv", response_class=Response,
         responses={200: {"content": {"text/csv": {}}}})
async def export_csv(job_id: JobId, session: SessionDep) -> Response:
    """Every metric point, wide: a `step` column, then one column per metric name."""
    job = get_job(session, job_id)
    cols = await run_in_threadpool(columnar, session, job_id)
    return Response(await run_in_threadpool(_csv, cols), media_type="text/csv; charset=utf-8",
                    headers=_attachment(job, "csv"))


@api.get("/jobs/{job_id}/metrics.json")
async def export_json(job_id: JobId, session: SessionDep) -> Response:
    """The same columns as JSON: {"step": [...], "<metric>": [...]} (null where not logged);
    pandas reads it with DataFrame(json.load(f))."""
    job = get_job(session, job_id)
    cols = await run_in_threadpool(columnar, session, job_id)
    return Response(json.dumps(cols, allow_nan=False, separators=(",", ":")),
                    media_type="application/json", headers=_attachment(job, "json"))


# --- compare ---------------------------------------------------------------------------------
def _jobs_by_ids(session: Session, raw: list[str]) -> list[Job]:
    try:
        ids = parse_ids(raw)
    except ValueError as exc:
        raise JobInputError("ids", str(exc)) from None
    found = {j.id: j for j in session.exec(select(Job).where(Job.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPException(404, f"job {missing[0]} does not exist; pick runs from GET "
                                 "/api/jobs")
    return [found[i] for i in ids]


def _run_summary(job: Job) -> dict:
    return {"id": job.id, "name": job.name, "status": job.status, "backend": job.backend,
            "method": job.method, "model": job.model, "dataset": job.dataset,
            "step": job.step, "tags": job.tags}


@api.get("/compare")
def compare(session: SessionDep,
            ids: Annotated[str, Query(max_length=2000, description="Job ids: 3,7,9")],
            names: Annotated[str | None, Query(max_length=2000, description=(
                "Metric names, comma separated; all when left out"))] = None,
            max_points: Annotated[int | None, Query(ge=10, le=100_000)] = 2000) -> dict:
    """Several runs' metric series (each downsampled like GET /api/jobs/{id}/metrics) and
    the union of the metric names they logged."""
    jobs = _jobs_by_ids(session, [ids])
    if not jobs:
        raise JobInputError("ids", "give one or more job ids, e.g. ids=3,7")
    wanted = [n for n in (names or "").split(",") if n] or None
    return {
        "runs": [_run_summary(j) for j in jobs],
        "metrics": metric_names(session, [j.id for j in jobs]),
        "series": {str(j.id): columnar(session, j.id, wanted, None, max_points) for j in jobs},
    }


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep) -> HTMLResponse:
    """Pick runs (the list's checkboxes or this page's picker), one chart, the diff table."""
    raw = request.query_params.getlist("ids")
    error, jobs = "", []
    try:
        jobs = _jobs_by_ids(session, raw)
    except JobInputError as exc:
        error = exc.message
    except HTTPException as exc:
        error = str(exc.detail)
    if not error and len(jobs) == 1:
        error = "Pick one more run: a comparison needs two or more."
    names = metric_names(session, [j.id for j in jobs]) if len(jobs) > 1 and not error else []
    metric = request.query_params.get("metric", "")
    metric = metric if metric in names else (names[0] if names else "")
    picker = list_jobs(session, JobQuery(limit=PICKER_SIZE))
    chosen = {j.id for j in jobs}
    final = dict(session.exec(select(Job.id, final_loss_expr()).where(Job.id.in_(chosen))).all())
    return page(request, "compare.html", jobs=jobs if not error else [], error=error,
                final_loss=final,
                rows=settings_diff(jobs) if len(jobs) > 1 and not error else [],
                metrics=names, metric=metric, picker=picker, chosen=chosen, max_runs=MAX_RUNS,
                ids=",".join(str(j.id) for j in jobs))


# --- notes and tags on the job page ----------------------------------------------------------
def _notes(request: Request, job: Job, editing: bool = False, errors: dict | None = None,
           values: dict | None = None) -> HTMLResponse:
    values = values or {"notes": job.notes, "tags": " ".join(job.tags)}
    return page(request, "_job_notes.html", job=job, editing=editing, errors=errors or {},
                values=values)


@router.get("/jobs/{job_id}/notes", response_class=HTMLResponse)
def notes_view(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id)
    return _notes(request, job) if job else not_found(request, job_id)


@router.get("/jobs/{job_id}/notes/edit", response_class=HTMLResponse)
def notes_edit(job_id: JobId, request: Request, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id)
    return _notes(request, job, editing=True) if job else not_found(request, job_id)


@router.post("/jobs/{job_id}/notes", response_class=HTMLResponse)
async def notes_save(job_id: JobId, request: Request, session: SessionDep) -> Response:
    """Save from the in-place form: the block comes back (errors beside the field, status 200
    so htmx swaps it); a plain form post is sent back to the job page."""
    form = await request.form()
    given = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD, ""))
    if not csrf_ok(given, request.app.state.csrf_token):
        return page(request, "not_found.html", 403, title="Form refused", message=(
            "This form did not come from this server's own page (its CSRF token is missing, "
            "or the server restarted since the page was loaded). Reload the page and retry."))
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    values = {"notes": str(form.get("notes", "")), "tags": str(form.get("tags", ""))}
    try:
        await run_in_threadpool(_edit, session, job, notes=values["notes"].replace("\r\n", "\n"),
                                tags=values["tags"])
    except JobInputError as exc:
        session.rollback()
        session.refresh(job)
        return _notes(request, job, True, {exc.field: exc.message}, values)
    if not is_htmx(request):
        return Response(status_code=303, headers={"Location": f"/jobs/{job.id}"})
    return _notes(request, job)
