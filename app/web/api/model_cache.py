"""The Hugging Face cache and the seed guide's suggested models: GET /api/models/suggested, GET
/api/models/cache, DELETE /api/models/cache/{repo_id} (issue 15).

A suggested model is a preset (app/hub/presets.py: the seed's tables, plus the person's own
file) with what the Models page shows beside it: its size (parameters; bytes on disk when
cached, else the download estimated from the weights' precision), whether it is cached, the
memory planner's verdict for the job its Train button opens, on this machine, and that
button's link. The cache is huggingface_hub's own scan (app/hub/cache_admin.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from sqlmodel import Session, select

from app.config import Settings
from app.hub.cache_admin import CacheRepoNotFound, cache_info, delete_repo, repo_folder
from app.hub.inspect import hub_cache_dir, resolve_model_dir
from app.hub.presets import (
    download_estimate,
    load_extra,
    merged,
    presets_file,
    shape_facts,
    train_knobs,
    train_url,
)
from app.models import Job, JobStatus, ModelEntry
from app.planner import check
from app.planner.estimate import plan
from app.units import fmt_bytes
from app.web.deps import SessionDep, SettingsDep
from contract.model_ref import hub_id_problem

router = APIRouter(tags=["models"])
REPO_ID = Path(description="The hub id, org/name", max_length=200)
NOT_DONE = (JobStatus.queued, JobStatus.starting, JobStatus.running)


# --- suggested ----------------------------------------------------------------------------
def _facts(preset: dict[str, Any]) -> dict[str, Any] | None:
    """Planner facts for a preset whose model is not here: its published shape."""
    shape, quant = preset.get("shape"), preset.get("quantization")
    if isinstance(shape, str) and shape in check.SHAPES:
        return check.shape_facts(shape, quant)
    if isinstance(shape, dict):
        return shape_facts(shape, quant)
    return None


def _plan(preset: dict[str, Any], knobs: dict[str, Any], here: bool,
          system: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """(the plan's summary, the parameter count) for the preset's method and knobs."""
    backend = preset["backend"]
    if here:
        result = check.plan_job(preset["model"], backend, preset["method"], knobs, system)
        params = (result.get("model") or {}).get("params")
    elif (facts := _facts(preset)) is not None:
        result, params = plan(facts, backend, preset["method"], knobs, system), facts["params"]
    else:
        return {"verdict": "unknown", "need_bytes": None, "budget_bytes": None,
                "summary": "planned once it is downloaded (no shape known)",
                "message": ""}, None
    if result["verdict"] == "unknown":
        return {"verdict": "unknown", "need_bytes": None, "budget_bytes": None,
                "summary": result["message"], "message": result["message"]}, params
    need, budget = int(result["estimate"]["total_bytes"]), int(result["budget"]["bytes"])
    return {"verdict": result["verdict"], "need_bytes": need, "budget_bytes": budget,
            "device": result["device"],
            "summary": f"needs ~{fmt_bytes(need)} of {fmt_bytes(budget)}: {result['verdict']}",
            "message": result["message"]}, params


def suggested(settings: Settings, system: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every preset with size, cached or not, plan and Train link; and the presets file's
    problems."""
    path = presets_file(settings.home_dir)
    extra, problems = load_extra(path, check.SHAPES)
    system = check.machine() if system is None else system
    rows = []
    for preset in merged(check.presets(), extra):
        folder = resolve_model_dir(preset["model"])
        knobs = train_knobs(preset)
        plan_summary, params = _plan(preset, knobs, folder is not None, system)
        on_disk = None
        if folder is not None:
            from app.hub.cache import blobs_size

            on_disk = blobs_size(repo_folder(hub_cache_dir(), preset["model"]))
        rows.append({
            "id": preset["id"], "title": preset["title"], "model": preset["model"],
            "backend": preset["backend"], "method": preset["method"],
            "origin": preset.get("origin", "seed"), "seed_says": preset["seed_says"],
            "quantization": preset.get("quantization"), "params": params,
            "download_bytes": preset.get("download_bytes")
            or download_estimate(params, preset.get("quantization")),
            "cached": folder is not None, "size_on_disk": on_disk,
            "path": str(folder) if folder else None,
            "seed_knobs": dict(preset.get("params") or {}),
            "plan": plan_summary,
            "train": {"backend": preset["backend"], "method": preset["method"], "params": knobs,
                      "url": train_url(preset)},
        })
    return {"presets": rows, "presets_file": str(path), "problems": problems}


@router.get("/api/models/suggested")
async def api_suggested(settings: SettingsDep) -> dict[str, Any]:
    """The seed guide's model tables (PyTorch/KTO and MLX/LoRA on an M4 24 GB), plus the
    presets in PROSPECT_PRESETS_FILE ($PROSPECT_HOME/presets.json): each with its size,
    whether it is in the Hugging Face cache, the memory planner's verdict for a KTO job
    on this machine with the seed's knobs, and the new-job link (``train.url``)."""
    return await run_in_threadpool(suggested, settings)


# --- the cache ----------------------------------------------------------------------------
@router.get("/api/models/cache")
async def api_cache() -> dict[str, Any]:
    """huggingface_hub.scan_cache_dir: every repo with size on disk, files and revisions;
    model folders with no snapshot yet (a download under way or stopped) as incomplete."""
    return await run_in_threadpool(cache_info)


def users_of(session: Session, repo_id: str) -> list[Job]:
    """Jobs not finished yet whose model (or any text knob, e.g. model_b) is ``repo_id`` or
    a path inside its cache folder: a download of it included."""
    folder = str(repo_folder(hub_cache_dir(), repo_id))
    out = []
    for job in session.exec(select(Job).where(Job.status.in_(NOT_DONE))):
        texts = [job.model, job.model_path or "",
                 *(v for v in (job.params or {}).values() if isinstance(v, str))]
        if any(t in (repo_id, folder) or t.startswith(folder + "/") for t in texts):
            out.append(job)
    return out


def remove_from_cache(session: Session, repo_id: str) -> dict[str, Any]:
    """Delete model repo ``repo_id`` from the cache: 422 a malformed id, 409 while a job
    uses it, 404 when it is not cached."""
    problem = hub_id_problem(repo_id)
    if problem:
        # As FastAPI's own validation answers it (the 422 the OpenAPI schema documents).
        raise RequestValidationError([{
            "loc": ("path", "repo_id"), "type": "value_error",
            "msg": f"{repo_id!r} is not a hub id: {problem} (org/name, e.g. "
                   "Qwen/Qwen2-0.5B-Instruct)"}])
    busy = users_of(session, repo_id)
    if busy:
        names = ", ".join(f"job {j.id} ({j.status.value})" for j in busy)
        raise HTTPException(409, f"{repo_id} is in use by {names}: cancel it or wait for it "
                                 "to finish, then delete it")
    folder = str(repo_folder(hub_cache_dir(), repo_id))
    try:
        out = delete_repo(repo_id)
    except CacheRepoNotFound:
        raise HTTPException(404, f"{repo_id} is not in the Hugging Face cache at "
                                 f"{hub_cache_dir()} (GET /api/models/cache lists what "
                                 "is)") from None
    # A download registered the model (source "hub"); its files are gone now, so is it.
    gone = [e for e in session.exec(select(ModelEntry).where(ModelEntry.source == "hub"))
            if e.path == folder or e.path.startswith(folder + "/")]
    for entry in gone:
        session.delete(entry)
    session.commit()
    out["unregistered"] = [e.id for e in gone]
    return out


@router.delete("/api/models/cache/{repo_id:path}")
def api_delete_cached(session: SessionDep, repo_id: str = REPO_ID) -> dict[str, Any]:
    """Delete a model repo from the Hugging Face cache (all its revisions and files): other
    tools sharing the cache lose it too. 409 while a job uses it (a download of it
    included), 404 when it is not cached."""
    return remove_from_cache(session, repo_id)
