"""GET /api/jobs/{id}/series/{kind}: the job page's memory and throughput charts, from the
stored events (the query and its downsampling: app/jobs/series.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from app.jobs.series import series
from app.web.deps import DB_INT_MAX, JobId, SessionDep, get_job

__all__ = ["router", "series"]  # series: tests/integration/test_job_page.py imports it here

router = APIRouter(prefix="/api")


@router.get("/jobs/{job_id}/series/{kind}")
def job_series(job_id: JobId, kind: Literal["memory", "progress"], session: SessionDep,
               max_points: Annotated[int | None, Query(ge=10, le=100_000)] = 2000,
               after_seq: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0) -> dict[str, Any]:
    """A job's memory samples (process RSS, backend allocator, system used/available/total,
    swap; bytes, over ``elapsed_s``; a job on several processes adds ``rank<r>_active`` per
    rank and ``ranks``, [{rank, host}]) or throughput (tokens/s and ETA by ``step``), from
    the stored events; downsampled to ``max_points`` keeping each bucket's peaks and dips."""
    get_job(session, job_id)
    return series(session, job_id, kind, max_points, after_seq)
