"""Job creation and the person's actions on a job: validated before anything starts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from app.config import Settings
from app.errors import JobInputError
from app.hub.cache import downloads_allowed, missing_message, missing_model
from app.hub.inspect import resolve_model_dir
from app.jobs.scale_checks import check_scale
from app.models import DatasetEntry, Job, JobCreate, JobStatus, ModelEntry
from app.paths import local_path
from app.planner.check import DoesNotFit, check_fits, machine, model_facts
from app.planner.tune import tune_plan
from contract.eval_split import split_indices
from contract.knobs import Method, ParamError, method_for
from contract.model_ref import HUB_ID, hub_id_problem
from contract.rows import DatasetError, kto_stats, load_kto_dataset
from contract.sft_rows import load_sft_rows


def resolve_model(session: Session, value: str, settings: Settings,
                  must_be_here: bool = True) -> str:
    """A registered model id, a local folder with a config.json, or a Hugging Face hub id.

    A hub id must be in the local cache unless workers may download it now; the planner
    passes ``must_be_here=False`` (it plans a preset's model before it is downloaded)."""
    value = value.strip()
    if not value:
        raise JobInputError("model", "choose a model: tiny-demo, a local folder or a hub id")
    entry = session.get(ModelEntry, value)
    if entry is not None:
        if not (Path(entry.path) / "config.json").is_file():
            raise JobInputError("model", f"registered model {value!r} is missing at "
                                f"{entry.path}; run `prospect init` to rebuild the demo")
        return entry.path
    if value.startswith(("/", "~", ".")):
        path = local_path(value, settings, "model")
        if not path.is_dir():
            raise JobInputError("model", f"model folder {path} does not exist; check the path")
        if not (path / "config.json").is_file():
            raise JobInputError("model", f"{path} has no config.json; point at a model folder "
                                "saved with save_pretrained (or an MLX model folder)")
        return str(path)
    if HUB_ID.match(value):
        problem = hub_id_problem(value)  # `tests/..` would name a folder, not a repo
        if problem:
            raise JobInputError("model", f"{value!r} is not a hub id: {problem}")
        if must_be_here and missing_model(value) is not None \
                and not downloads_allowed(settings.allow_downloads):
            raise JobInputError("model", missing_message(value))
        return value  # the worker resolves it through the hub cache (workers/model_source.py)
    raise JobInputError("model", f"{value!r} is not a registered model, an absolute folder "
                        "path or a hub id like Qwen/Qwen2-0.5B-Instruct")


def resolve_dataset(session: Session, value: str, settings: Settings) -> str:
    value = value.strip()
    if not value:
        raise JobInputError("dataset", "choose a dataset: demo-kto or a .jsonl/.json file path")
    entry = session.get(DatasetEntry, value)
    if entry is not None:
        if not Path(entry.path).is_file():
            raise JobInputError("dataset", f"registered dataset {value!r} is missing at "
                                f"{entry.path}; run `prospect init` to rebuild the demo")
        return entry.path
    path = local_path(value, settings, "dataset")
    if not path.is_file():
        raise JobInputError("dataset", f"dataset file {path} does not exist; give the path of "
                            "a .jsonl or .json file, or a registered dataset id (demo-kto)")
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise JobInputError("dataset", f"{path.name}: use a .jsonl or .json file (add a .csv "
                            "or .parquet file on the Datasets page first, then pick its id)")
    return str(path)


def check_dataset_kind(session: Session, value: str, method: str) -> None:
    """A registered SFT dataset has no labels: a KTO job on it could only fail."""
    entry = session.get(DatasetEntry, value.strip())
    if entry is not None and method == "kto" and entry.kind == "sft":
        raise JobInputError("dataset", f"{entry.id} is SFT data ({entry.format}: no "
                            "desirable/undesirable labels); KTO needs rows with a label, or "
                            "prompt, chosen and rejected. Pick an SFT method or a KTO dataset")


def check_kto_dataset(path: str, shown: str | None = None) -> dict:
    """Read every row now, so a bad row is a 422 naming it, not a failed job minutes later.
    Returns the label counts (kto_stats); ``shown`` is the file name to put in messages."""
    shown = shown or Path(path).name
    try:
        rows = load_kto_dataset(path)
    except DatasetError as exc:
        raise JobInputError("dataset", f"{shown}: {exc}; fix that row or remove it") from None
    stats = kto_stats(rows)
    if not stats["desirable"] or not stats["undesirable"]:
        raise JobInputError("dataset", f"{shown} has {stats['desirable']} desirable "
                            f"and {stats['undesirable']} undesirable rows; KTO needs both "
                            "labels (label true and label false)")
    return stats


def check_sft_dataset(path: str) -> None:
    """An SFT dataset: text, prompt/completion or messages rows, or a KTO file (its desirable
    rows are used); a bad row is a 422 naming it."""
    try:
        load_sft_rows(path)
    except DatasetError as exc:
        raise JobInputError("dataset", f"{Path(path).name}: {exc}; fix that row or remove it") \
            from None


def method_spec(backend: str, method: str) -> Method:
    """The backend/method pair's knobs, or the 422 that names the method."""
    try:
        return method_for(backend, method)
    except ParamError as exc:
        raise JobInputError("method", exc.message) from None


def checked_params(spec: Method, params: Any) -> dict[str, Any]:
    """The knobs with defaults filled in, or the 422 naming the first bad one. A job
    submission and a memory plan (app/jobs/planning.py) check them the same way."""
    errors = spec.errors(params)
    if errors:
        raise JobInputError(f"params.{errors[0].field}", errors[0].message)
    return spec.validate(params)


# Methods whose jobs start from their own endpoints, which check what they need.
ELSEWHERE = {
    "convert": "converting for MLX starts from the Models page or POST /api/models/{id}/convert "
               "(it checks the output name and the source model)",
    "download": "downloading a hub model starts from the Models page's Add model or POST "
                "/api/models/download (it checks the hub's file list and the free disk)",
}


def validate_job(session: Session, data: JobCreate, settings: Settings) -> Job:
    """Check everything a worker would trip on; return an unsaved Job or raise."""
    params = checked_params(method_spec(data.backend, data.method), data.params)
    if data.method in ELSEWHERE:  # they have their own checks (names, disk, the hub)
        raise JobInputError("method", ELSEWHERE[data.method])
    model_path = resolve_model(session, data.model, settings)
    if data.method == "fuse":  # no dataset: the adapter is the input
        return _fuse_job(session, data, params, model_path, settings)
    if data.method == "generate":  # app/jobs/generate.py checks and creates those
        raise JobInputError("method", "a generate job answers an arena's prompts: start one "
                            "from the Arena page, POST /api/arenas or POST /api/jobs")
    dataset_path = resolve_dataset(session, data.dataset, settings)
    check_scale(data.backend, params, settings)  # GPUs and hosts that exist
    check_dataset_kind(session, data.dataset, data.method)
    if data.method == "kto":
        check_eval_split(check_kto_dataset(dataset_path), params)
        if params.get("init_adapter", "").strip():
            params = {**params, "init_adapter": init_adapter_folder(
                session, params["init_adapter"], data.backend, data.model, model_path,
                settings)}
    elif data.method == "sft":
        check_sft_dataset(dataset_path)
    if not data.force:
        check_plan(model_path, data.backend, data.method, params)
    name = data.name.strip() or f"{data.method}-{Path(data.model.rstrip('/')).name}"
    return Job(name=name, backend=data.backend, method=data.method, model=data.model.strip(),
               dataset=data.dataset.strip(), params=params, model_path=model_path,
               dataset_path=dataset_path)


def check_plan(model_path: str, backend: str, method: str, params: dict) -> None:
    """A job the planner says won't fit is refused (the caller skips this when forced)."""
    try:
        check_fits(model_path, backend, method, params)
    except DoesNotFit as exc:
        if params.get("tune") == "auto" and tuned_setting_fits(model_path, backend, method,
                                                              params):
            return  # the worker trains with a setting that fits (app/planner/tune.py)
        raise JobInputError("plan", f"this job won't fit in memory: {exc.result['message']}"
                            " Change the settings, or send force: true to start anyway.",
                            extra={"plan": exc.result}) from None


def tuned_setting_fits(model_path: str, backend: str, method: str, params: dict) -> bool:
    """Whether auto-tuning has a setting of the same effective batch that fits here."""
    facts, _ = model_facts(model_path)
    if facts is None:
        return False
    plan = tune_plan(facts, backend, method, params, machine())
    return bool(plan and plan.candidates)


def check_eval_split(stats: dict, params: dict) -> None:
    """The held-out split the worker will make (contract/eval_split.py), counted now: a side
    with fewer than 2 rows is a 422 naming the numbers, not a failed job."""
    fraction = float(params.get("eval_fraction") or 0)
    if fraction <= 0:
        return
    labels = [True] * stats["desirable"] + [False] * stats["undesirable"]
    held = len(split_indices(labels, fraction, int(params.get("seed", 0))))
    train = len(labels) - held
    if held < 2 or train < 2:
        raise JobInputError("params.eval_fraction", f"eval_fraction {fraction:g} of "
                            f"{len(labels)} rows holds out {held} and trains on {train}: KTO "
                            "needs at least 2 on each side. Raise eval_fraction, add rows, or "
                            "set eval_fraction to 0")


# --- adapters a job starts from (init_adapter) or answers with (generate) -----------------
ADAPTER_FILES = {"torch": ("adapter_config.json", "adapter_model.safetensors"),
                 "mlx": ("adapters.safetensors", "adapter_config.json")}
JOB_REF = re.compile(r"^(?:job[-\s#]*)?(\d{1,18})$", re.IGNORECASE)


def adapter_kind(folder: Path) -> str | None:
    """"torch" (a PEFT adapter), "mlx" (an mlx-lm adapter) or None (no adapter here)."""
    for kind, files in ADAPTER_FILES.items():
        if all((folder / f).is_file() for f in files):
            return kind
    return None


def adapter_base(folder: Path) -> str | None:
    """The base model the adapter's config records: PEFT's base_model_name_or_path, mlx-lm's
    model; None when it records none (or the config cannot be read)."""
    try:
        raw = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    base = raw.get("base_model_name_or_path") or raw.get("model")
    return base.strip() if isinstance(base, str) and base.strip() else None


def model_names(*values: str | None) -> set[str]:
    """The names one model goes by: as given, and the folder it resolves to (a hub id's
    snapshot in the local cache), so a model given as an id and as a path compare equal."""
    names: set[str] = set()
    for value in values:
        value = (value or "").strip().rstrip("/")
        if not value:
            continue
        names.add(value)
        try:
            folder = resolve_model_dir(value)
            if folder is not None:
                names.add(str(folder.resolve()))
        except (OSError, ValueError):
            pass
    return names


def adapter_folder(value: str, backend: str, field: str, settings: Settings) -> Path:
    """A folder inside the allowed paths holding an adapter of ``backend``, or a 422."""
    folder = local_path(value.strip(), settings, field)
    if not folder.is_dir():
        raise JobInputError(field, f"{folder} is not a folder; give an adapter folder (a "
                            "finished job's adapter/) or a job id")
    kind = adapter_kind(folder)
    if kind is None:
        raise JobInputError(field, f"{folder} holds no adapter: a torch adapter has "
                            "adapter_config.json and adapter_model.safetensors, an MLX one "
                            "adapters.safetensors and adapter_config.json")
    if kind != backend:
        raise JobInputError(field, f"{folder} holds {_adapter_word(kind)}; this job runs on "
                            f"{backend}, which loads {_adapter_word(backend)}: pick one trained "
                            f"with {backend}, or set backend to {kind}")
    return folder


def _adapter_word(kind: str) -> str:
    return "a torch (PEFT) adapter" if kind == "torch" else "an MLX adapter"


def check_adapter_base(field: str, what: str, trained_on: str | None, other_names: set[str],
                       model: str, model_path: str) -> None:
    """The adapter must be trained on this job's model: else a 422 naming both."""
    if not trained_on or other_names & model_names(model, model_path):
        return
    pick = "a job" if what.startswith("job") else "an adapter"
    raise JobInputError(field, f"{what} was trained on {trained_on}, this job's model is "
                        f"{model.strip()}: pick {pick} trained on {model.strip()}, or set "
                        f"model to {trained_on}")


def init_adapter_folder(session: Session, value: str, backend: str, model: str,
                        model_path: str, settings: Settings) -> str:
    """``init_adapter`` as the absolute adapter folder the worker loads: a job id (12,
    job-12) whose KTO or SFT run saved an adapter, or an adapter folder; either trained with
    this backend on this job's base model."""
    field = "params.init_adapter"
    value = value.strip()
    ref = JOB_REF.match(value)
    if ref is None:
        folder = adapter_folder(value, backend, field, settings)
        base = adapter_base(folder)
        check_adapter_base(field, f"the adapter in {folder}", base, model_names(base), model,
                           model_path)
        return str(folder)
    source = session.get(Job, int(ref.group(1))) if int(ref.group(1)) < 2**63 else None
    if source is None:
        raise JobInputError(field, f"there is no job {ref.group(1)}; give the id of a KTO or "
                            "SFT job that saved an adapter, or an adapter folder")
    name = f"job {source.id}"
    if source.method not in ("kto", "sft"):
        raise JobInputError(field, f"{name} is a {source.method} job: it trained no adapter. "
                            "Give a KTO or SFT job's id")
    folder = Path(source.adapter_path) if source.adapter_path else None
    if source.status not in (JobStatus.succeeded, JobStatus.cancelled) or folder is None \
            or not folder.is_dir() or adapter_kind(folder) is None:
        raise JobInputError(field, f"{name} is {source.status.value} and has no adapter to "
                            "start from; pick a job that succeeded (or was cancelled after "
                            "saving one)")
    if source.backend != backend:
        raise JobInputError(field, f"{name}'s adapter is {_adapter_word(source.backend)}; "
                            f"this job runs on {backend}, which loads "
                            f"{_adapter_word(backend)}: pick a {backend} job, or set backend "
                            f"to {source.backend}")
    check_adapter_base(field, f"{name}'s adapter", source.model,
                       model_names(source.model, source.model_path), model, model_path)
    return str(folder.resolve())


MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,199}$")


def _fuse_job(session: Session, data: JobCreate, params: dict, model_path: str,
              settings: Settings) -> Job:
    given = params["adapter_path"].strip()
    adapter = local_path(given, settings, "params.adapter_path") if given else None
    if adapter is None or not adapter.is_dir():
        raise JobInputError("params.adapter_path", "give the adapter folder of a finished job "
                            "(or use POST /api/adapters/{job_id}/fuse)")
    name = params["name"].strip()
    if name and not MODEL_ID.match(name):
        raise JobInputError("params.name", f"{name!r}: use letters, digits, '.', '_' or '-'")
    pending = session.exec(select(Job).where(Job.method == "fuse", Job.status.in_(
        [JobStatus.queued, JobStatus.starting, JobStatus.running]))).all()
    if name and (session.get(ModelEntry, name) is not None
                 or any(j.params.get("name") == name for j in pending)):
        raise JobInputError("params.name", f"a model {name!r} is already registered (or being "
                            "fused); choose another name", status_code=409)
    if not name:  # named after what it is: the base model and the run that trained it
        source = session.exec(select(Job).where(Job.method != "fuse", Job.adapter_path.in_(
            {given, str(adapter)}))).first()
        name = fused_model_name(session, data.model, source.name if source and source.name
                                else adapter.parent.name)
    params = {**params, "adapter_path": str(adapter), "name": name}
    return Job(name=data.name.strip() or f"fuse-{name or adapter.parent.name}",
               backend=data.backend, method="fuse", model=data.model.strip(), dataset="",
               params=params, model_path=model_path, dataset_path="")


def fused_model_name(session: Session, model: str, run_name: str) -> str:
    """``<model>-<run name>`` as a model id (letters, digits, '.', '_', '-'), e.g.
    ``Qwen2.5-0.5B-Instruct-baseline-lr-5e-7``; ``-2``, ``-3``... when a registered model or
    a pending fuse has it already."""
    base = Path(model.strip().rstrip("/")).name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{base}-{run_name}").strip("-._")
    slug = re.sub(r"-{2,}", "-", slug)[:120].rstrip("-._") or "fused"
    pending = session.exec(select(Job).where(Job.method == "fuse", Job.status.in_(
        [JobStatus.queued, JobStatus.starting, JobStatus.running]))).all()
    taken = {m.id for m in session.exec(select(ModelEntry))}
    taken |= {j.params.get("name") for j in pending}
    name, n = slug, 2
    while name in taken:
        name, n = f"{slug}-{n}", n + 1
    return name


def create_job(session: Session, data: JobCreate, settings: Settings) -> Job:
    return save_job(session, validate_job(session, data, settings), settings)


def save_job(session: Session, job: Job, settings: Settings) -> Job:
    """Add and commit a checked job, its run folder named after its id."""
    session.add(job)
    session.flush()  # the id, inside the same transaction: no job is ever seen without run_dir
    job.run_dir = str(settings.runs_dir / f"{job.id:06d}")
    session.commit()
    session.refresh(job)
    return job
