"""The adapters and models pages, and the adapter actions on /adapters.

/adapters lists every trained adapter with its run, base model, size on disk and final
metrics. Its Fuse and Delete buttons post here (htmx, with the page's CSRF header): the work
is app/jobs/adapters.py, the same functions ``POST /api/adapters/{id}/fuse`` and
``DELETE /api/adapters/{id}`` call. Delete removes the adapter's files only: the run, its
metrics and its log stay, so the run still compares and its chart still draws.
/models lists the registered models (demo, local, fused) and the Hugging Face cache with
size, architecture and parameter count, read from files (app/hub/inspect.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, select

from app.hub.cache import cached_models, label
from app.jobs import adapters as service
from app.jobs.artifacts import folder_size, relative
from app.models import Job, JobStatus, ModelEntry
from app.web.deps import (
    CsrfForm,
    JobId,
    SessionDep,
    SettingsDep,
    SupervisorDep,
    get_job,
)
from app.web.templating import hx_redirect, is_htmx, page

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api")
FINAL_METRICS = ("final_loss", "train_loss", "val_loss", "samples_per_s", "train_runtime")


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


def adapters_list(request: Request, session: Session, error: str | None = None,
                  status_code: int = 200) -> HTMLResponse:
    """The page's list (and the reason an action was refused) as htmx swaps it. htmx swaps
    only a 2xx answer, so it gets the refusal with a 200, as the dataset forms do; any
    other caller gets the refusal's own status."""
    code = 200 if is_htmx(request) else status_code
    return page(request, "_adapters_list.html", code, rows=adapter_rows(session), error=error)


@router.post("/adapters/{job_id}/fuse", response_class=HTMLResponse)
def fuse_action(job_id: JobId, request: Request, session: SessionDep, settings: SettingsDep,
                supervisor: SupervisorDep, _form: CsrfForm) -> Response:
    """The Fuse button: a fuse job, then its page (HX-Redirect, or a 303)."""
    try:
        job = service.fuse_adapter(session, get_job(session, job_id), settings)
    except HTTPException as exc:
        return adapters_list(request, session, f"Fuse failed: {exc.detail}", exc.status_code)
    supervisor.wake()
    return hx_redirect(request, f"/jobs/{job.id}")


@router.delete("/adapters/{job_id}", response_class=HTMLResponse)
def delete_action(job_id: JobId, request: Request, session: SessionDep,
                  _form: CsrfForm) -> HTMLResponse:
    """The Delete button: the adapter's files go; the list comes back without its row."""
    try:
        service.delete_adapter(session, get_job(session, job_id))
    except HTTPException as exc:
        return adapters_list(request, session, f"Delete failed: {exc.detail}",
                             exc.status_code)
    return adapters_list(request, session)


@api.delete("/adapters/{job_id}")
def delete_adapter(job_id: JobId, session: SessionDep) -> dict[str, Any]:
    """Remove job ``job_id``'s adapter folder; the run, its metrics and log are kept.

    Only a folder inside the job's own run folder is removed (an adapter path recorded
    elsewhere is refused), and never while the job runs.
    """
    return service.delete_adapter(session, get_job(session, job_id))


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
