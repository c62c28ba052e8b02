"""The adapters and models pages, and the adapter actions on /adapters.

/adapters lists every trained adapter with its run, base model, size on disk and final
metrics. Its Fuse and Delete buttons post here (htmx, with the page's CSRF header): the work
is app/jobs/adapters.py, the same functions ``POST /api/adapters/{id}/fuse`` and
``DELETE /api/adapters/{id}`` call. Delete removes the adapter's files only: the run, its
metrics and its log stay, so the run still compares and its chart still draws.
/models is where models arrive: the registered ones (demo, local, fused, converted), the Add
model and Add a local folder forms (their own fragments), the seed guide's Suggested models
(app/web/api/model_cache.py: size, the planner's verdict here, Download or Train) and the
Hugging Face cache as huggingface_hub scans it (sizes, Delete from cache, Train).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, select

from app.config import Settings
from app.errors import JobInputError
from app.hub.cache import blobs_size, label, mlx_facts, read_config, snapshot_dir
from app.hub.cache_admin import cache_info
from app.hub.download import HubRefusal
from app.hub.inspect import ModelInfoError, inspect_model
from app.jobs import adapters as service
from app.jobs.artifacts import folder_size, relative
from app.jobs.hub_download import start_download
from app.models import Job, JobStatus, ModelEntry
from app.web.api.model_cache import remove_from_cache, suggested
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
        info = inspect_model(path)
    except (ModelInfoError, OSError):
        return {}
    return {"architecture": ", ".join(info.get("architectures") or [])
            or info.get("model_type") or "", "params": info.get("params"),
            "dtype": info.get("dtype"), "quantization": info.get("quantization"),
            "params_source": info.get("params_source")}


def registered_rows(session: Session) -> list[dict[str, Any]]:
    registered = []
    for entry in session.exec(select(ModelEntry).order_by(ModelEntry.source, ModelEntry.id)):
        p = Path(entry.path)
        exists = (p / "config.json").is_file()
        # A hub snapshot's files are links to the repo's blobs: its size is theirs.
        repo = p.parent.parent if p.parent.name == "snapshots" else None
        size = (blobs_size(repo) if repo else folder_size(p)) if exists else None
        registered.append({"id": entry.id, "source": entry.source, "path": entry.path,
                           "exists": exists, "size_bytes": size,
                           **(describe(entry.path) if exists else {})})
    return registered


def cache_rows() -> dict[str, Any]:
    """The cache's model repos (huggingface_hub's scan: sizes, revisions), each with its
    format and shape read from its snapshot; incomplete downloads as such."""
    info = cache_info()
    rows = []
    for repo in info["repos"]:
        if repo["repo_type"] != "model":
            continue
        snap = snapshot_dir(Path(repo["path"])) if repo["complete"] else None
        facts = mlx_facts(repo["repo_id"], read_config(snap)) if snap else {}
        rows.append({**repo, "id": repo["repo_id"], "snapshot": str(snap) if snap else None,
                     "label": label(facts), **(describe(str(snap)) if snap else {})})
    return {"rows": rows, "cache_dir": info["cache_dir"],
            "total_bytes": sum(r["size_on_disk"] for r in rows), "warnings": info["warnings"]}


def models_context(session: Session, settings: Settings) -> dict[str, Any]:
    cache = cache_rows()
    return {"registered": registered_rows(session), "cache": cache,
            "suggested": suggested(settings)}


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, session: SessionDep,
                      settings: SettingsDep) -> HTMLResponse:
    context = await run_in_threadpool(models_context, session, settings)
    return page(request, "models.html", nav="models", **context)


@router.post("/models/suggested/download", response_class=HTMLResponse)
def suggested_download(request: Request, session: SessionDep, settings: SettingsDep,
                       supervisor: SupervisorDep, form: CsrfForm) -> Response:
    """A suggested model's Download button: the download job (app/jobs/hub_download.py, as
    POST /api/models/download), then its page; a refusal (offline, gated, no disk, one
    under way) or "cached already" comes back in the section (a 200 for htmx)."""
    repo_id = str(form.get("repo_id", ""))[:200]
    try:
        status, answer = start_download(session, settings, repo_id, None)
    except HubRefusal as exc:
        error, code, note = f"Download of {repo_id} refused: {exc.message}", exc.status, None
    except JobInputError as exc:
        error, code, note = f"Download refused: {exc}", 422, None
    else:
        if status == 201:
            supervisor.wake()
            return hx_redirect(request, f"/jobs/{answer['job'].id}")
        error, code, note = None, 200, answer["message"]
    return page(request, "_models_suggested.html", 200 if is_htmx(request) else code,
                suggested=suggested(settings), error=error, note=note)


@router.delete("/models/cache/{repo_id:path}", response_class=HTMLResponse)
def delete_cached_action(repo_id: str, request: Request, session: SessionDep,
                         _form: CsrfForm) -> HTMLResponse:
    """Delete from cache (after the page's confirm): the cache section comes back without
    the repo, or with why it was refused (a 200 for htmx, so it swaps)."""
    error, code = None, 200
    try:
        remove_from_cache(session, repo_id)
    except HTTPException as exc:
        error, code = f"Delete failed: {exc.detail}", exc.status_code
    except RequestValidationError as exc:
        error, code = f"Delete failed: {exc.errors()[0]['msg']}", 422
    return page(request, "_models_cache.html", 200 if is_htmx(request) else code,
                cache=cache_rows(), error=error, deleted=None if error else repo_id)
