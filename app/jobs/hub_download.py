"""Starting a hub download (issue 15): the pre-check, then the job (backend "hub", method
"download"). POST /api/models/download and the Models page's Add model form both call
``start_download``; it blocks on the hub's API (seconds at most: app/hub/download.py's
timeouts), so callers run it in a worker thread, never on the event loop.

The pre-check: the repo's files (only those a model needs), their size against the free disk
of the Hugging Face cache (refused with the numbers), what is in the cache already (all of
it: nothing to download), and the memory planner's verdict for training the model here
(from its config.json; shown, not enforced).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from app.config import Settings
from app.errors import JobInputError
from app.hub.cache import cached_models, mlx_facts
from app.hub.download import HubRefusal, check_space, fetch_config, in_cache, repo_files
from app.jobs.service import save_job
from app.models import Job, JobStatus, ModelEntry
from app.planner.check import plan_job
from contract.knobs import METHODS
from contract.model_ref import hub_id_problem

REVISION_MAX = 200


def check_request(repo_id: Any, revision: Any) -> tuple[str, str]:
    """The hub id and revision, stripped; JobInputError (422) naming what is wrong."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise JobInputError("repo_id", "give a hub id like Qwen/Qwen2.5-0.5B-Instruct")
    repo_id = repo_id.strip()
    problem = hub_id_problem(repo_id)
    if problem:
        raise JobInputError("repo_id", f"{repo_id[:120]!r} is not a hub id: {problem} "
                            "(e.g. Qwen/Qwen2.5-0.5B-Instruct)")
    if revision is None or (isinstance(revision, str) and not revision.strip()):
        revision = "main"
    if not isinstance(revision, str) or len(revision) > REVISION_MAX or any(
            c.isspace() or not c.isprintable() for c in revision.strip()) or ".." in revision:
        raise JobInputError("revision", "a branch, tag or commit of the repo (no spaces, "
                            f"at most {REVISION_MAX} characters); empty: main")
    return repo_id, revision.strip()


def verdict(repo_id: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """The planner's verdict for a default training job on this model here (shown, not
    enforced): KTO on torch, or on MLX for an MLX model."""
    if config is None:
        return {"verdict": "unknown", "message": "no memory check: the repo's config.json "
                "could not be read", "backend": None}
    backend = "mlx" if mlx_facts(repo_id, config)["mlx"] else "torch"
    with tempfile.TemporaryDirectory(prefix="prospect-plan-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        plan = plan_job(folder, backend, "kto", METHODS[(backend, "kto")].defaults())
    return {"verdict": plan["verdict"], "message": plan["message"], "backend": backend,
            "method": "kto"}


def active_download(session: Session, repo_id: str) -> Job | None:
    return session.exec(select(Job).where(
        Job.method == "download", Job.model == repo_id,
        Job.status.in_((JobStatus.queued, JobStatus.running)))).first()


def register(session: Session, repo_id: str, snapshot: Path) -> ModelEntry:
    """The downloaded model as a registered one (the job picker lists it), not committed
    (app/jobs/ingest.py calls this at a download's ``artifact`` event); the cache listing
    is read afresh."""
    entry = session.merge(ModelEntry(id=repo_id, path=str(snapshot), source="hub"))
    cached_models(fresh=True)
    return entry


def precheck(session: Session, repo_id: Any, revision: Any = None) -> dict[str, Any]:
    """What the download would fetch and whether it can: the files and sizes, the bytes in
    the cache already, the free disk and the planner's verdict. JobInputError (422) for a
    bad request, HubRefusal (its status) when the hub or the disk says no."""
    repo_id, revision = check_request(repo_id, revision)
    running = active_download(session, repo_id)
    if running is not None:
        raise HubRefusal(409, f"{repo_id} is downloading already: job {running.id} "
                         f"(/jobs/{running.id})", job_id=running.id)
    repo = repo_files(repo_id, revision)
    snapshot, here, missing = in_cache(repo)
    check = {"repo_id": repo_id, "revision": revision, "commit": repo.commit,
             "files": [{"name": f, "bytes": repo.sizes[f]} for f in repo.files],
             "skipped": sorted(set(repo.sizes) - set(repo.files)),
             "total_bytes": repo.total, "cached_bytes": here, "cached": not missing,
             "snapshot": str(snapshot)}
    if missing:
        check.update(check_space(repo.total - here))
        check["plan"] = verdict(repo_id, fetch_config(repo))
    return check


def start_download(session: Session, settings: Settings, repo_id: Any,
                   revision: Any = None, timeout_s: int = 10) -> tuple[int, dict[str, Any]]:
    """(201, the job and the check) or (200, the cached model); refusals as ``precheck``."""
    check = precheck(session, repo_id, revision)
    repo_id, snapshot = check["repo_id"], Path(check["snapshot"])
    if check["cached"]:
        entry = register(session, repo_id, snapshot)
        session.commit()
        return 200, {"cached": True, "path": str(snapshot), "model": entry.model_dump(),
                     "check": check, "message": f"{repo_id} is in the cache already "
                     f"({snapshot}): nothing to download"}
    params = METHODS[("hub", "download")].validate({
        "revision": check["revision"], "allow_patterns": [f["name"] for f in check["files"]],
        "timeout_s": timeout_s})
    job = save_job(session, Job(name=f"download {repo_id}", backend="hub", method="download",
                                model=repo_id, dataset="", params=params, model_path=repo_id,
                                dataset_path=""), settings)
    return 201, {"job": job, "check": check}
