"""Your own model folders, and converting a model for MLX: the rules (issue 15).

``POST /api/models`` registers a folder saved with ``save_pretrained`` or an MLX model folder:
it must be an absolute path inside the folders Prospect may read (app/paths.py) and hold a
config.json, a tokenizer and weights (app/hub/folders.py reads them). ``DELETE
/api/models/{id}`` unregisters one (its files stay). ``POST /api/models/{id}/convert`` queues
an MLX ``convert`` job (workers/mlx/convert.py) whose model is registered when it is saved
(app/jobs/ingest.py). The REST routes and the Models page's htmx actions call these same
functions, so a refusal reads the same everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlmodel import Session, or_, select

from app.config import Settings
from app.errors import JobInputError
from app.hub.folders import missing_pieces, quantization, read_config, slug
from app.hub.inspect import resolve_model_dir
from app.jobs.service import method_spec, resolve_model, save_job
from app.models import Job, JobStatus, ModelEntry
from app.paths import local_path
from contract.knobs import CONVERT_BITS

MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,199}$")
PENDING = (JobStatus.queued, JobStatus.starting, JobStatus.running)


# --- register and unregister ------------------------------------------------------------------
def register_folder(session: Session, settings: Settings, path: str,
                    name: str | None = None) -> ModelEntry:
    """Register ``path`` under ``name`` (default: the folder's name); 422 naming the field
    and the fix, 409 for a name or a folder registered already."""
    if not isinstance(path, str) or not path.strip():
        raise JobInputError("path", "give the absolute path of a model folder")
    if not path.strip().startswith(("/", "~")):
        raise JobInputError("path", f"{path!r} is a relative path; give an absolute path")
    folder = local_path(path.strip(), settings, "path")
    if not folder.is_dir():
        raise JobInputError("path", f"{folder} is not a folder; give a model folder saved "
                            "with save_pretrained, or an MLX model folder")
    missing = missing_pieces(folder)
    if missing:
        raise JobInputError("path", f"{folder} is not a complete model folder: it has no "
                            f"{'; no '.join(missing)}. Point at the folder save_pretrained "
                            "(or mlx_lm.convert) wrote", extra={"missing": missing})
    name = (name or "").strip() or slug(folder.name)
    check_name(name, "name")
    if session.get(ModelEntry, name) is not None:
        raise JobInputError("name", f"a model {name!r} is registered already; give another "
                            "name", status_code=409)
    for entry in session.exec(select(ModelEntry)):
        if _same_folder(entry.path, folder):
            raise JobInputError("path", f"{folder} is registered already, as {entry.id!r}",
                                status_code=409)
    entry = ModelEntry(id=name, path=str(folder), source="local")
    session.add(entry)
    session.commit()
    session.refresh(entry)
    return entry


def unregister(session: Session, model_id: str) -> dict[str, Any]:
    """Forget a registered model; its files stay. 409 while a job that uses it is queued
    or running (the demo comes back with `prospect init`)."""
    entry = session.get(ModelEntry, model_id)
    if entry is None:
        raise JobInputError("id", f"no registered model {model_id!r}", status_code=404)
    using = session.exec(select(Job).where(Job.status.in_(PENDING), or_(
        Job.model == model_id, Job.model_path == entry.path))).first()
    if using is not None:
        raise JobInputError("id", f"job {using.id} ({using.status.value}) uses {model_id}; "
                            "cancel it or let it finish first", status_code=409)
    session.delete(entry)
    session.commit()
    return {"id": model_id, "removed": True, "files_kept": entry.path}


def check_name(name: str, field: str) -> None:
    if not MODEL_ID.match(name):
        raise JobInputError(field, f"{name!r}: a model name is 1-200 letters, digits, '.', "
                            "'_' or '-', starting with a letter or digit")


def _same_folder(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve() == folder
    except (OSError, RuntimeError):
        return False


# --- convert for MLX --------------------------------------------------------------------------
def convert_model(session: Session, settings: Settings, model: str, params: dict[str, Any],
                  name: str | None = None) -> Job:
    """Queue an MLX convert job of ``model`` (a registered id or a cached hub id); the caller
    wakes the supervisor. 422s name the field: q_bits, q_group_size, dtype, name, model."""
    spec = method_spec("mlx", "convert")
    errors = spec.errors({k: v for k, v in params.items() if v is not None})
    if errors:
        raise JobInputError(errors[0].field, errors[0].message)
    full = spec.validate({k: v for k, v in params.items() if v is not None})
    model_path = resolve_model(session, model, settings)
    folder = Path(model_path) if model_path.startswith("/") else resolve_model_dir(model_path)
    if folder is not None:  # None: a hub id the worker will download (downloads allowed)
        check_convertible(folder, model)
    name = (name or "").strip()
    if name:
        check_name(name, "name")
        if name_taken(session, settings, name):
            raise JobInputError("name", f"a model {name!r} exists already (registered, being "
                                f"converted, or a folder in {settings.models_dir}); choose "
                                "another name")
    else:
        name = free_name(session, settings, default_name(model, full["q_bits"]))
    job = Job(name=f"convert-{name}", backend="mlx", method="convert", model=model.strip(),
              dataset="", params={**full, "name": name}, model_path=model_path,
              dataset_path="")
    return save_job(session, job, settings)


def check_convertible(folder: Path, model: str) -> None:
    missing = missing_pieces(folder)
    if missing:
        raise JobInputError("model", f"{model} is not a transformers model folder: it has no "
                            f"{'; no '.join(missing)}. Convert a folder saved with "
                            "save_pretrained, or a hub id in the cache")
    config = read_config(folder)
    if quantization(config) is not None:
        raise JobInputError("model", f"{model} is quantized already "
                            f"({quantization(config)['bits']}-bit); convert the original "
                            "(unquantized) model instead")
    if not (config or {}).get("model_type"):
        raise JobInputError("model", f"{folder / 'config.json'} names no model_type; mlx-lm "
                            "picks the architecture by it. Use a transformers model folder")


def default_name(model: str, bits: int) -> str:
    base = slug(Path(model.strip().rstrip("/")).name)
    return f"{base}-{bits}bit" if bits in CONVERT_BITS and bits else f"{base}-mlx"


def name_taken(session: Session, settings: Settings, name: str) -> bool:
    if session.get(ModelEntry, name) is not None or (settings.models_dir / name).exists():
        return True
    pending = session.exec(select(Job).where(Job.method == "convert",
                                             Job.status.in_(PENDING))).all()
    return any((j.params or {}).get("name") == name for j in pending)


def free_name(session: Session, settings: Settings, base: str) -> str:
    name, n = base, 2
    while name_taken(session, settings, name):
        name, n = f"{base}-{n}", n + 1
    return name
