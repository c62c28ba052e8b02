"""Adapters of finished jobs, and fusing one into a standalone model (a job like any other)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from sqlmodel import select

from app.jobs.adapters import fuse_adapter
from app.models import Job, JobPublic, JobStatus
from app.web.deps import JobDep, SessionDep, SettingsDep, SupervisorDep

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
def fuse(source: JobDep, session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
         body: FuseRequest | None = None) -> Job:
    """Queue a fuse job: the adapter of job ``job_id`` merged into its base model, saved as a
    model folder and registered under ``name`` as a base model for new jobs."""
    job = fuse_adapter(session, source, settings, body.name if body and body.name else "")
    supervisor.wake()
    return job
