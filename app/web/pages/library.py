"""The adapters and models pages, and deleting an adapter.

/adapters lists every trained adapter with its run, base model, size on disk and final
metrics; fuse and download go through the existing endpoints, delete through
``DELETE /api/adapters/{job_id}``, which removes the adapter's files only: the run, its
metrics and its log stay, so the run still compares and its chart still draws.
/models lists the registered models (demo, local, fused) and the Hugging Face cache with
size, architecture and parameter count, read from files (app/hub/inspect.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlmodel import Session, select

from app.db import SessionDep
from app.hub.cache import cached_models, label
from app.jobs.artifacts import folder_size, relative
from app.models import Job, JobStatus, ModelEntry
from app.web.api.jobs import JobId, get_job
from app.web.pages.jobs import page, templates

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api")
FINAL_METRICS = ("final_loss", "train_loss", "val_loss", "samples_per_s", "train_runtime")
templates.env.globals.update(cached_models=cached_models, model_label=label)


# --- adapters -----------------------------------------------------------------------------
def adapter_rows(session: Session) -> list[dict[str, Any]]:
    """Succeeded jobs that still have an adapter folder, newest first."""
    jobs = session.exec(select(Job).where(Job.status == JobStatus.succeeded,
                                          Job.adapter_path.is_not(None),
                                          Job.method != "fuse").order_by(Job.id.desc()))
    rows = []
    for job in jobs:
        path = Path(job.adapter_path)
        exists = path.is_dir()
        summary = job.summary or {}
        rel = relative(job, job.adapter_path)
        rows.append({
            "job": job, "path": str(path), "exists": exists,
            "size_bytes": folder_size(path) if exists else None,
            "metrics": {k: summary[k] for k in FINAL_METRICS
                        if isinstance(summary.get(k), int | float)},
            "download": f"/api/jobs/{job.id}/artifacts/download?path={rel}"
            if exists and rel else None,
        })
    return rows


@router.get("/adapters", response_class=HTMLResponse)
def adapters_page(request: Request, session: SessionDep) -> HTMLResponse:
    return page(request, "adapters.html", nav="adapters", rows=adapter_rows(session))


@api.delete("/adapters/{job_id}")
def delete_adapter(job_id: JobId, session: SessionDep, request: Request) -> dict[str, Any]:
    """Remove job ``job_id``'s adapter folder; the run, its metrics and log are kept.

    Only a folder inside the job's own run folder is removed (an adapter path recorded
    elsewhere is refused), and never while the job runs.
    """
    job = get_job(session, job_id)
    if job.status.is_active:
        raise HTTPException(409, f"job {job_id} is {job.status.value}; cancel it or wait for "
                            "it to finish before deleting its adapter")
    if not job.adapter_path:
        raise HTTPException(404, f"job {job_id} has no adapter (never saved, or deleted "
                            "already)")
    path = Path(job.adapter_path).resolve()
    if relative(job, str(path)) in (None, "", "."):
        raise HTTPException(409, f"job {job_id}'s adapter {path} is not inside its run folder "
                            f"{job.run_dir}; Prospect deletes only what it wrote there")
    freed = folder_size(path) if path.is_dir() else 0
    if path.is_dir():
        shutil.rmtree(path)
    job.adapter_path = None
    job.summary = {**(job.summary or {}), "adapter_deleted": str(path)}
    session.add(job)
    session.commit()
    return {"job_id": job_id, "deleted": str(path), "freed_bytes": freed}


# --- models -------------------------------------------------------------------------------
def describe(path: str) -> dict[str, Any]:
    """Architecture and parameter count from the model's files; {} when unreadable."""
    try:
        from app.hub.inspect import ModelInfoError, inspect_model
    except ImportError:  # the planner's module missing: the config's architecture only
        from app.hub.cache import read_config

        config = read_config(Path(path))
        return {"architecture": ", ".join(config.get("architectures") or [])}
    try:
        info = inspect_model(path)
    except (ModelInfoError, OSError):
        return {}
    return {"architecture": ", ".join(info.get("architectures") or [])
            or info.get("model_type") or "", "params": info.get("params"),
            "dtype": info.get("dtype"), "quantization": info.get("quantization"),
            "params_source": info.get("params_source")}


def model_rows(session: Session) -> tuple[list[dict], list[dict]]:
    registered = []
    for entry in session.exec(select(ModelEntry).order_by(ModelEntry.source, ModelEntry.id)):
        p = Path(entry.path)
        exists = (p / "config.json").is_file()
        registered.append({"id": entry.id, "source": entry.source, "path": entry.path,
                           "exists": exists, "size_bytes": folder_size(p) if exists else None,
                           **(describe(entry.path) if exists else {})})
    cached = [{**m, "label": label(m), **describe(m["path"])} for m in cached_models()]
    return registered, cached


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, session: SessionDep) -> HTMLResponse:
    registered, cached = await run_in_threadpool(model_rows, session)
    from app.hub.inspect import hub_cache_dir

    return page(request, "models.html", nav="models", registered=registered, cached=cached,
                cache_dir=str(hub_cache_dir()))
