"""Model ids the playground and /v1 answer to, and which worker serves each.

- ``<base>``: a registered model id (``tiny-demo``, a fused model's name), a hub id in the
  local cache, or an absolute folder: exactly what a job's ``model`` accepts;
- ``<base>@job-<N>``: job N's adapter on its base model; ``<base>`` must be job N's
  ``model`` (the adapter was trained on it). It is served by the job's backend.

A base model is served by the request's ``backend`` if given, else by a worker that already
has it loaded, else by MLX on Apple silicon (when mlx-lm is installed) and torch elsewhere.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from app.config import Settings
from app.errors import JobInputError
from app.inference.errors import InferenceError
from app.jobs.service import resolve_model
from app.models import Job, ModelEntry
from app.system.machine import has_module

ADAPTER_ID = re.compile(r"^(?P<base>.+)@job-(?P<job>\d{1,18})$")
LISTED = 20  # ids named in a 404
BACKENDS = ("torch", "mlx")


@dataclass(frozen=True)
class Target:
    """What serves a model id: the worker (backend, model_path) and the adapter folder."""

    id: str
    base: str  # the base model's id
    kind: str  # base | fused | adapter
    model_path: str
    backend: str
    adapter: str | None = None
    job_id: int | None = None


def parse_id(model_id: str) -> tuple[str, int | None]:
    """(base id, job id) of ``<base>@job-<N>``; (id, None) for a base id."""
    m = ADAPTER_ID.match(model_id)
    return (m["base"], int(m["job"])) if m else (model_id, None)


def adapter_id(job: Job) -> str:
    return f"{job.model}@job-{job.id}"


def _has_adapter(job: Job) -> bool:
    return bool(job.adapter_path) and job.method != "fuse" and Path(job.adapter_path).is_dir()


def _created(dt) -> int:
    return int(dt.timestamp()) if dt else 0


def _entry(id: str, created: int, kind: str, base: str, backend: str | None,
           job_id: int | None, name: str, loaded: bool) -> dict[str, Any]:
    return {"id": id, "object": "model", "created": created, "owned_by": "prospect",
            "prospect": {"kind": kind, "base": base, "backend": backend, "job_id": job_id,
                         "name": name, "loaded": loaded}}


def list_models(session: Session, loaded: dict[str, list[str]] | None = None
                ) -> list[dict[str, Any]]:
    """GET /v1/models' ``data``: adapters (newest first), then registered models, then the
    other base models jobs were trained on. ``loaded``: model path -> backends serving it."""
    loaded = loaded or {}
    out: list[dict[str, Any]] = []
    jobs = session.exec(select(Job).where(Job.adapter_path.is_not(None))
                        .order_by(Job.id.desc())).all()
    for job in jobs:
        if _has_adapter(job):
            out.append(_entry(adapter_id(job), _created(job.finished_at or job.created_at),
                              "adapter", job.model, job.backend, job.id, job.name or "",
                              job.backend in loaded.get(job.model_path, ())))
    seen = set()
    for entry in session.exec(select(ModelEntry).order_by(ModelEntry.created_at)).all():
        seen.add(entry.id)
        backends = loaded.get(entry.path, [])
        out.append(_entry(entry.id, _created(entry.created_at),
                          "fused" if entry.source == "fused" else "base", entry.id,
                          backends[0] if backends else None, None, entry.id, bool(backends)))
    for job in session.exec(select(Job).order_by(Job.id)).all():
        if job.model in seen or not job.model_path:
            continue
        seen.add(job.model)
        if job.model_path.startswith("/") and not Path(job.model_path, "config.json").is_file():
            continue  # a folder that is gone serves nothing
        backends = loaded.get(job.model_path, [])
        out.append(_entry(job.model, _created(job.created_at), "base", job.model,
                          backends[0] if backends else None, None, job.model, bool(backends)))
    return out


def _not_found(session: Session, what: str) -> InferenceError:
    ids = [m["id"] for m in list_models(session)]
    shown = ", ".join(ids[:LISTED]) + (f" … ({len(ids) - LISTED} more)" if len(ids) > LISTED
                                       else "")
    return InferenceError(404, f"{what}. Models here: {shown or 'none yet'} (GET /v1/models "
                          "lists them all).", "model_not_found", "model")


def platform_facts() -> dict[str, bool]:
    """What the backend choice depends on, read here so choose_backend stays pure."""
    return {"apple_silicon": platform.system() == "Darwin" and platform.machine() == "arm64",
            "mlx": has_module("mlx_lm"), "torch": has_module("torch")}


def choose_backend(requested: str | None, loaded: list[str], facts: dict[str, bool]) -> str:
    """The request's backend; else one that has the model loaded; else MLX on Apple silicon
    with mlx-lm installed, torch elsewhere."""
    if requested:
        return requested
    if loaded:
        return loaded[0]
    return "mlx" if facts.get("apple_silicon") and facts.get("mlx") else "torch"


def _check_installed(backend: str, facts: dict[str, bool]) -> None:
    if backend == "mlx" and not facts.get("mlx", True):
        raise InferenceError(422, "the mlx backend needs mlx-lm, which is not installed here: "
                             "pip install mlx-lm (on Linux: 'mlx[cpu]' mlx-lm), or use "
                             "backend torch", "backend_unavailable", "backend")
    if backend == "torch" and not facts.get("torch", True):
        raise InferenceError(422, "the torch backend needs torch and transformers, which are "
                             "not installed here: pip install 'prospect[torch]', or use "
                             "backend mlx", "backend_unavailable", "backend")


def resolve(session: Session, settings: Settings, model_id: str, backend: str | None = None,
            loaded: dict[str, list[str]] | None = None,
            facts: dict[str, bool] | None = None) -> Target:
    """The worker and adapter for a model id, or the 404/422 that says what is wrong."""
    loaded = loaded or {}
    facts = platform_facts() if facts is None else facts
    model_id = model_id.strip()
    base, job_id = parse_id(model_id)
    if job_id is None:
        try:
            path = resolve_model(session, model_id, settings)
        except JobInputError as exc:
            raise _not_found(session, f"unknown model {model_id!r}: {exc.message}") from None
        entry = session.get(ModelEntry, model_id)
        chosen = choose_backend(backend, loaded.get(path, []), facts)
        _check_installed(chosen, facts)
        return Target(model_id, model_id, "fused" if entry and entry.source == "fused"
                      else "base", path, chosen)
    job = session.get(Job, job_id)
    if job is None:
        raise _not_found(session, f"there is no job {job_id} (in {model_id!r})")
    if not _has_adapter(job):
        raise _not_found(session, f"job {job_id} ({job.status.value}) has no adapter on disk"
                         + (": a fuse job makes a model, not an adapter; use its name"
                            if job.method == "fuse" else ""))
    if base != job.model:
        raise InferenceError(422, f"job {job_id}'s adapter was trained on {job.model}, not "
                             f"{base}; use {adapter_id(job)}", "adapter_mismatch", "model")
    if backend and backend != job.backend:
        raise InferenceError(422, f"job {job_id}'s adapter was trained with the "
                             f"{job.backend} backend and is served by it; leave backend out "
                             f"or send {job.backend!r}", "backend_mismatch", "backend")
    _check_installed(job.backend, facts)
    return Target(model_id, job.model, "adapter", job.model_path, job.backend,
                  job.adapter_path, job.id)
