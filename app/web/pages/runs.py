"""Run history pages: /compare (pick runs, one chart, the settings diff) and the job page's
notes-and-tags block with its in-place edit form. The REST side is app/web/api/runs.py; the
jobs list itself is app/web/pages/jobs.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlmodel import select

from app.errors import JobInputError
from app.jobs.compare import MAX_RUNS, metric_names, settings_diff
from app.jobs.history import JobQuery, final_loss_expr, list_jobs
from app.jobs.records import MissingRun, edit_run, runs_by_ids
from app.models import Job
from app.web.deps import CsrfForm, JobId, SessionDep
from app.web.templating import is_htmx, not_found, page

router = APIRouter(include_in_schema=False)
PICKER_SIZE = 100


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep) -> HTMLResponse:
    """Pick runs (the list's checkboxes or this page's picker), one chart, the diff table."""
    raw = request.query_params.getlist("ids")
    error, jobs = "", []
    try:
        jobs = runs_by_ids(session, raw)
    except JobInputError as exc:
        error = exc.message
    except MissingRun as exc:
        error = str(exc)
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
async def notes_save(job_id: JobId, request: Request, form: CsrfForm,
                     session: SessionDep) -> Response:
    """Save from the in-place form: the block comes back (errors beside the field, status 200
    so htmx swaps it); a plain form post is sent back to the job page."""
    job = session.get(Job, job_id)
    if job is None:
        return not_found(request, job_id)
    values = {"notes": str(form.get("notes", "")), "tags": str(form.get("tags", ""))}
    try:
        await run_in_threadpool(edit_run, session, job,
                                notes=values["notes"].replace("\r\n", "\n"), tags=values["tags"])
    except JobInputError as exc:
        session.rollback()
        session.refresh(job)
        return _notes(request, job, True, {exc.field: exc.message}, values)
    if not is_htmx(request):
        return Response(status_code=303, headers={"Location": f"/jobs/{job.id}"})
    return _notes(request, job)
