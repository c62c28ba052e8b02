"""A trained job's adapter: fusing it into a standalone model (a new job), deleting its files.

The REST API (``POST /api/adapters/{id}/fuse``, ``DELETE /api/adapters/{id}``) and the pages'
htmx actions (the job page, /adapters) call these same functions, so a refusal reads the
same everywhere. Refusals are HTTPExceptions (as in app/jobs/artifacts.py): the REST
answer's body stays ``{"detail": "<message>"}`` and a page shows ``detail`` in its fragment.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from sqlmodel import Session

from app.config import Settings
from app.jobs.artifacts import folder_size, relative
from app.jobs.service import create_job
from app.models import Job, JobCreate


def fuse_adapter(session: Session, source: Job, settings: Settings, name: str = "") -> Job:
    """Queue a fuse job: ``source``'s adapter merged into its base model, saved as a model
    folder and registered under ``name`` (empty: app/jobs/service.py names it). The caller
    wakes the supervisor."""
    adapter = source.adapter_path
    if source.method == "fuse" or not adapter or not Path(adapter).is_dir():
        raise HTTPException(409, f"job {source.id} is {source.status.value} and has no adapter "
                            "to fuse; fuse a job that succeeded")
    data = JobCreate(name=f"fuse-{source.id}", backend=source.backend, method="fuse",
                     model=source.model, dataset="",
                     params={"adapter_path": adapter, "name": name.strip()})
    return create_job(session, data, settings)


def delete_adapter(session: Session, job: Job) -> dict[str, Any]:
    """Remove ``job``'s adapter folder; the run, its metrics and log are kept (it still
    compares and its charts still draw).

    Only a folder inside the job's own run folder is removed (an adapter path recorded
    elsewhere is refused), and never while the job runs.
    """
    if job.status.is_active:
        raise HTTPException(409, f"job {job.id} is {job.status.value}; cancel it or wait for "
                            "it to finish before deleting its adapter")
    if not job.adapter_path:
        raise HTTPException(404, f"job {job.id} has no adapter (never saved, or deleted "
                            "already)")
    path = Path(job.adapter_path).resolve()
    if relative(job, str(path)) in (None, "", "."):
        raise HTTPException(409, f"job {job.id}'s adapter {path} is not inside its run folder "
                            f"{job.run_dir}; Prospect deletes only what it wrote there")
    freed = folder_size(path) if path.is_dir() else 0
    if path.is_dir():
        shutil.rmtree(path)
    job.adapter_path = None
    job.summary = {**(job.summary or {}), "adapter_deleted": str(path)}
    session.add(job)
    session.commit()
    return {"job_id": job.id, "deleted": str(path), "freed_bytes": freed}
