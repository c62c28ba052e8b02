"""Adapters of finished jobs, and fusing one into a standalone model (a job like any other)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from sqlmodel import select

from app.db import SessionDep
from app.jobs.service import create_job
from app.models import Job, JobCreate, JobPublic, JobStatus
from app.web.api.jobs import JobId, get_job

router = APIRouter(prefix="/api")


class FuseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None  # the model id to register; default <model>-<run name>


@router.get("/adapters")
def adapters(session: SessionDep) -> list[dict]:
    """Every succeeded job's adapter, newest first."""
    jobs = session.exec(select(Job).where(Job.status == JobStatus.succeeded,
                                          Job.adapter_path.is_not(None)).order_by(Job.id.desc()))
    return [{"job_id": j.id, "name": j.name, "backend": j.backend, "method": j.method,
             "model": j.model, "adapter_path": j.adapter_path,
             "final_loss": (j.summary or {}).get("final_loss")} for j in jobs]


@router.post("/adapters/{job_id}/fuse", status_code=201, response_model=JobPublic)
def fuse(job_id: JobId, session: SessionDep, request: Request,
         body: FuseRequest | None = None) -> Job:
    """Queue a fuse job: the adapter of job ``job_id`` merged into its base model, saved as a
    model folder and registered under ``name`` as a base model for new jobs."""
    source = get_job(session, job_id)
    adapter = source.adapter_path
    if source.method == "fuse" or not adapter or not Path(adapter).is_dir():
        raise HTTPException(409, f"job {job_id} is {source.status.value} and has no adapter to "
                            "fuse; fuse a job that succeeded")
    name = (body.name if body and body.name else "").strip()  # empty: app/jobs/service.py names it
    data = JobCreate(name=f"fuse-{job_id}", backend=source.backend, method="fuse",
                     model=source.model, dataset="",
                     params={"adapter_path": adapter, "name": name})
    job = create_job(session, data, request.app.state.settings)
    request.app.state.supervisor.wake()
    return job
