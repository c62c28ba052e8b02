"""A job's artifacts over REST: the list (GET /api/jobs/{id}/artifacts) and one folder's
download as a zip, streamed as it is written (app/jobs/artifacts.py does the work)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.jobs.artifacts import confined, list_artifacts, run_root, zip_files
from app.web.deps import JobId, SessionDep, get_job

router = APIRouter(prefix="/api")


@router.get("/jobs/{job_id}/artifacts")
def artifacts(job_id: JobId, session: SessionDep) -> list[dict[str, Any]]:
    """The job's adapter, fused model and checkpoints, with sizes and download links."""
    return list_artifacts(session, get_job(session, job_id))


@router.get("/jobs/{job_id}/artifacts/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}}})
def download(job_id: JobId, session: SessionDep,
             path: str = Query(max_length=1000, description="A folder or file relative to "
                               "the job's run folder, e.g. 'adapter'.")) -> StreamingResponse:
    """A zip of one artifact folder (or file) of the job, streamed as it is written."""
    job = get_job(session, job_id)
    target = confined(job, path)
    root = run_root(job)
    if target.is_file():
        files = [target]
    else:
        files = sorted(p for p in target.rglob("*")
                       if p.is_file() and p.resolve().is_relative_to(root))
    name = f"job{job.id}-{target.name or 'run'}.zip"
    # Names in the zip start with the folder's own name: 'adapter/adapter_config.json'.
    return StreamingResponse(
        zip_files(target.parent, files), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'})
