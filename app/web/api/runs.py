"""Run history over REST: edit a run's name, notes and tags (PATCH /api/jobs/{id}); export
its metrics (/api/jobs/{id}/metrics.csv|json); compare runs (/api/compare). The pages that
use them (/compare, the job page's notes block) are app/web/pages/runs.py.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.errors import JobInputError
from app.jobs.compare import metric_names
from app.jobs.history import NOTES_MAX, TAGS_MAX
from app.jobs.metrics import columnar
from app.jobs.records import (
    MissingRun,
    edit_run,
    export_filename,
    metrics_csv,
    run_summary,
    runs_by_ids,
)
from app.models import Job, JobPublic
from app.web.deps import JobId, SessionDep, get_job

api = APIRouter(prefix="/api")


class JobEdit(BaseModel):
    """What PATCH /api/jobs/{id} may change; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, description="At most 200 characters.")
    notes: str | None = Field(default=None, description=f"At most {NOTES_MAX} characters.")
    tags: list[str] | None = Field(default=None, description=(
        f"At most {TAGS_MAX} tags of 1-32 letters, digits and _ . : / + -; replaces the "
        "run's tags."))


@api.patch("/jobs/{job_id}", response_model=JobPublic)
def edit_job(job_id: JobId, data: JobEdit, session: SessionDep) -> Job:
    """Rename a run, or set its notes or tags (any state, even while it trains)."""
    return edit_run(session, get_job(session, job_id), **data.model_dump(exclude_unset=True))


def _attachment(job: Job, ext: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{export_filename(job, ext)}"'}


@api.get("/jobs/{job_id}/metrics.csv", response_class=Response,
         responses={200: {"content": {"text/csv": {}}}})
async def export_csv(job_id: JobId, session: SessionDep) -> Response:
    """Every metric point, wide: a `step` column, then one column per metric name."""
    job = get_job(session, job_id)
    cols = await run_in_threadpool(columnar, session, job_id)
    return Response(await run_in_threadpool(metrics_csv, cols),
                    media_type="text/csv; charset=utf-8", headers=_attachment(job, "csv"))


@api.get("/jobs/{job_id}/metrics.json")
async def export_json(job_id: JobId, session: SessionDep) -> Response:
    """The same columns as JSON: {"step": [...], "<metric>": [...]} (null where not logged);
    pandas reads it with DataFrame(json.load(f))."""
    job = get_job(session, job_id)
    cols = await run_in_threadpool(columnar, session, job_id)
    return Response(json.dumps(cols, allow_nan=False, separators=(",", ":")),
                    media_type="application/json", headers=_attachment(job, "json"))


@api.get("/compare")
def compare(session: SessionDep,
            ids: Annotated[str, Query(max_length=2000, description="Job ids: 3,7,9")],
            names: Annotated[str | None, Query(max_length=2000, description=(
                "Metric names, comma separated; all when left out"))] = None,
            max_points: Annotated[int | None, Query(ge=10, le=100_000)] = 2000) -> dict:
    """Several runs' metric series (each downsampled like GET /api/jobs/{id}/metrics) and
    the union of the metric names they logged."""
    try:
        jobs = runs_by_ids(session, [ids])
    except MissingRun as exc:
        raise HTTPException(404, str(exc)) from None
    if not jobs:
        raise JobInputError("ids", "give one or more job ids, e.g. ids=3,7")
    wanted = [n for n in (names or "").split(",") if n] or None
    return {
        "runs": [run_summary(j) for j in jobs],
        "metrics": metric_names(session, [j.id for j in jobs]),
        "series": {str(j.id): columnar(session, j.id, wanted, None, max_points) for j in jobs},
    }
