"""The new-job form's values: defaults, what a post means, and what carries over a swap.

The form draws one method's knobs (contract/knobs.py). Choosing another method or model swaps
the knob fieldset (``swap_values``): the person's own values carry over to the new method's
knob of the same meaning, everything else takes the new defaults. A post reads only what the
form showed: each checkbox comes with a hidden "false" before it, so an unchecked box is off
and a box that was never on the form is not a value at all (the method's default applies).
A post that carries another method's knobs (the person changed the method and submitted
before the swap) is refused, naming them, instead of silently running other settings.

Also here, for the form's page, its fragments and the plan panel alike: the template context
(``form_context``), the method a post picks, and what "clone" or a "Train" link fills in.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select
from starlette.datastructures import FormData

from app.config import Settings
from app.errors import JobInputError
from app.hub.cache import cached_models, downloads_allowed, missing_model
from app.models import DatasetEntry, Job, ModelEntry
from app.units import number
from app.web.scale_form import NO_SCALE, scale_shown
from contract.knobs import METHODS, Knob, Method, ParamError, method_for
from contract.model_ref import hub_id_problem, is_folder_path
from contract.tune import BATCH_KNOBS, SPEED_KNOBS

DEMO_MODEL, DEMO_DATASET = "tiny-demo", "demo-kto"
GROUP_TITLES = {
    "training": "Training", "kto": "KTO loss", "memory": "Memory", "lora": "LoRA adapter",
    "logging": "Logging and checkpoints", "hardware": "Hardware", "data": "Data",
    "start": "Start from", "evaluation": "Held-out evaluation", "scale": "Scale",
}
# fuse: from an adapter; generate: an arena's answers; download, convert: the Models page
NOT_IN_FORM = ("fuse", "generate", "download", "convert")
TRAINING_METHODS = tuple(k for k, m in METHODS.items() if m.method not in NOT_IN_FORM)
# The demo model is tiny and random: the seed guide's recipe (5e-7, a point every 10 steps)
# moves its KTO loss by 1e-6 and draws three points. Measured on the 2-core VM over 50 steps
# of batch 2 x 128 tokens: KTO at 1e-4 went 0.500 -> 0.495 (noise on a chart), at 1e-3 to
# 0.46 with reward margins of 0.3; MLX SFT at 1e-4 went 6.6 -> 5.9. The API keeps the knobs'
# own defaults: scripts rely on them.
DEMO_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("torch", "kto"): {"learning_rate": 1e-3, "max_steps": 50, "logging_steps": 1,
                       "gradient_accumulation_steps": 1, "max_length": 128, "save_steps": 25},
    ("mlx", "sft"): {"learning_rate": 1e-4, "iters": 50, "steps_per_report": 1,
                     "steps_per_eval": 25, "steps_per_save": 25, "max_seq_length": 128},
    ("mlx", "kto"): {"learning_rate": 1e-3, "iters": 50, "steps_per_report": 1,
                     "steps_per_save": 25, "max_seq_length": 128},
}
# Knobs of the same meaning under each backend's names (TRL's, mlx-lm's).
SAME_MEANING = [{"learning_rate"}, {"max_length", "max_seq_length"}, {"max_steps", "iters"},
                {"per_device_train_batch_size", "batch_size"},
                {"gradient_checkpointing", "grad_checkpoint"}, {"r", "rank"},
                {"lora_dropout", "dropout"}]
FORM_FIELDS = ("name", "method", "model_choice", "model_text", "dataset_choice", "dataset_text")
KNOBS_METHOD, KNOBS_MODEL = "knobs_method", "knobs_model"  # what the knobs were drawn for


def method_key(spec: Method) -> str:
    return f"{spec.backend}/{spec.method}"


def is_demo(model: str) -> bool:
    return model.strip() == DEMO_MODEL


def form_defaults(spec: Method, model: str) -> dict[str, Any]:
    """The form's starting values: the knobs' own, or the demo's for the demo model. The form
    preselects ``tune: auto`` (the knob's default stays off for the API's scripts)."""
    values = spec.defaults()
    if is_demo(model):
        values.update(DEMO_DEFAULTS.get((spec.backend, spec.method), {}))
    if spec.knob("tune") is not None:
        values["tune"] = "auto"
    return values


def effective_batch_of(spec: Method, values: dict[str, Any]) -> dict[str, int] | None:
    """{batch, accumulation, processes, effective} from the form's values (as typed), or None
    when the method has no such knobs or a value is not a whole number yet. Each of torch's
    num_processes takes its own per-device batch, so they multiply the effective batch; MLX
    hosts split one batch between them, which leaves it as it is."""
    if (spec.backend, spec.method) not in SPEED_KNOBS:
        return None
    batch_key, accum_key = BATCH_KNOBS[spec.backend]
    try:
        batch = int(str(values.get(f"params.{batch_key}", "")).strip())
        accum = int(str(values.get(f"params.{accum_key}", "")).strip())
        processes = int(str(values.get("params.num_processes", "1")).strip() or 1) \
            if spec.knob("num_processes") is not None else 1
    except ValueError:
        return None
    if batch < 1 or accum < 1 or processes < 1:
        return None
    return {"batch": batch, "accumulation": accum, "processes": processes,
            "effective": batch * accum * processes,
            "batch_knob": batch_key, "accumulation_knob": accum_key}


def chosen_model(values: dict[str, Any]) -> str:
    return str(values.get("model_text", "")).strip() or str(values.get("model_choice", ""))


def knob_groups(spec: Method, scale: dict[str, Any] | None = None,
                values: dict[str, Any] | None = None) -> list[tuple[str, str, list[Knob]]]:
    """(group, title, knobs) in the order the groups first appear in contract.knobs; the
    scale group only where it can do something here (app/web/scale_form.py)."""
    groups: dict[str, list[Knob]] = {}
    for knob in spec.knobs:
        if knob.group == "scale" and not scale_shown(spec, scale, values or {}):
            continue  # not on the form: its default (one process) applies
        groups.setdefault(knob.group, []).append(knob)
    return [(g, GROUP_TITLES.get(g, g.replace("_", " ").capitalize()), knobs)
            for g, knobs in groups.items()]


def knob_value(knob: Knob, value: Any) -> Any:
    """A knob's value as the form shows it: bools stay bools, lists are comma separated."""
    if knob.type is bool:
        return bool(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return number(value)


def set_knob_defaults(values: dict[str, Any], spec: Method) -> dict[str, Any]:
    """Fill ``values`` with the defaults for its method and model (demo or not)."""
    model = chosen_model(values)
    for name, value in form_defaults(spec, model).items():
        values[f"params.{name}"] = knob_value(spec.knob(name), value)
    values[KNOBS_METHOD], values[KNOBS_MODEL] = method_key(spec), model
    return values


def blank_form(spec: Method, models: list, datasets: list) -> dict[str, Any]:
    model_ids = [m.id for m in models]
    dataset_ids = [d.id for d in datasets]
    values: dict[str, Any] = {
        "name": "", "method": method_key(spec), "model_text": "", "dataset_text": "",
        "model_choice": DEMO_MODEL if DEMO_MODEL in model_ids else next(iter(model_ids), ""),
        "dataset_choice": DEMO_DATASET if DEMO_DATASET in dataset_ids
        else next(iter(dataset_ids), ""),
    }
    return set_knob_defaults(values, spec)


def posted_knobs(form: FormData) -> set[str]:
    return {k[len("params."):] for k in form if k.startswith("params.")}


def read_form(form: FormData, spec: Method) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The form's values as typed (to show again), the params to validate, and the posted
    knobs ``spec`` does not have (another method's: the caller refuses the post).

    Only knobs on the form are params; an empty field is None (so the Method says "must not
    be empty" unless the knob is nullable). Coercion is the Method's job.
    """
    values: dict[str, Any] = {k: str(form.get(k, "")) for k in FORM_FIELDS}
    values[KNOBS_METHOD] = str(form.get(KNOBS_METHOD, method_key(spec)))
    values[KNOBS_MODEL] = str(form.get(KNOBS_MODEL, chosen_model(values)))
    defaults = form_defaults(spec, chosen_model(values))
    params: dict[str, Any] = {}
    for knob in spec.knobs:
        key = f"params.{knob.name}"
        sent = form.getlist(key)
        if not sent:  # not on the form: shown (and run) with its default
            values[key] = knob_value(knob, defaults[knob.name])
            continue
        if knob.type is bool:  # the hidden "false", then "true" when the box is checked
            values[key] = params[knob.name] = sent[-1] in ("true", "on", "1")
            continue
        raw = str(sent[-1])
        values[key] = raw
        params[knob.name] = raw.strip() or None
    foreign = sorted(posted_knobs(form) - {k.name for k in spec.knobs})
    return values, params, foreign


def counterpart(name: str, spec: Method) -> str | None:
    """``name``'s knob in ``spec``: the same name, or the same meaning under another name."""
    if spec.knob(name) is not None:
        return name
    for names in SAME_MEANING:
        if name in names:
            return next((n for n in names if spec.knob(n) is not None), None)
    return None


def swap_values(form: FormData, old: Method, new: Method) -> dict[str, Any]:
    """The form's values after choosing method ``new`` (or another model): a knob the person
    changed from its default carries over to its counterpart; the rest take the new
    defaults (the demo's for the demo model)."""
    values: dict[str, Any] = {k: str(form.get(k, "")) for k in FORM_FIELDS}
    old_defaults = form_defaults(old, str(form.get(KNOBS_MODEL, "")))
    set_knob_defaults(values, new)
    for knob in old.knobs:
        sent = form.getlist(f"params.{knob.name}")
        target = counterpart(knob.name, new)
        if not sent or target is None:
            continue
        if knob.type is bool:
            value: Any = sent[-1] in ("true", "on", "1")
            changed = value != bool(old_defaults[knob.name])
        else:
            value = str(sent[-1]).strip()
            changed = value != str(knob_value(knob, old_defaults[knob.name]))
        if not changed:
            continue
        if target == "iters" and str(value).startswith("-"):
            continue  # max_steps -1 means "by epochs": mlx-lm has no such thing
        values[f"params.{target}"] = value
    return values


def foreign_message(spec: Method, foreign: list[str], old: str) -> str:
    """Why a post with another method's knobs is refused, in words for the page; the knobs
    that have a counterpart here (steps, batch, length) are named first."""
    first = ("max_steps", "iters", "per_device_train_batch_size", "batch_size", "max_length",
             "max_seq_length")
    named = sorted(foreign, key=lambda n: (first.index(n) if n in first else len(first),
                                           counterpart(n, spec) is None, n))
    shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
    this = f"{spec.backend} {spec.method.upper()}"
    drawn = f"{old.replace('/', ' ').replace('kto', 'KTO').replace('sft', 'SFT')}'s " \
        if old and old != method_key(spec) else ""
    return (f"the form sent {drawn}settings ({shown}) while Backend / method says {this}, "
            f"so nothing was started. The form now shows {this}'s settings, with the values "
            "you changed carried over: check them and start again.")


# --- what the form's page and fragments draw ------------------------------------------------
METHOD_HELP = {
    "torch/kto": "TRL's KTOTrainer on PyTorch with a LoRA adapter (CUDA, MPS or CPU).",
    "mlx/sft": "mlx-lm's LoRA fine-tuning on the completions (supervised), on Apple silicon "
               "or MLX's CPU build on Linux.",
    "mlx/kto": "KTO on MLX with a LoRA adapter (the loss of TRL's KTOTrainer, for mlx-lm), "
               "on Apple silicon or MLX's CPU build on Linux.",
}


def dataset_of(values: dict[str, Any]) -> str:
    return str(values.get("dataset_text", "")).strip() or str(values.get("dataset_choice", ""))


def pick_method(value: str) -> Method:
    backend, _, method = value.partition("/")
    try:
        return method_for(backend or "torch", method or "kto")
    except ParamError as exc:
        raise JobInputError("method", exc.message) from None


def drawn_for(form: FormData) -> Method | None:
    """The method whose knobs the form showed (its hidden marker), if it names one."""
    try:
        return pick_method(str(form.get(KNOBS_METHOD, "")))
    except JobInputError:
        return None


def model_status(session: Session, model: str, settings: Settings | None
                 ) -> dict[str, Any] | None:
    """What to do when the chosen model is a hub id that is not on this machine."""
    model = model.strip()
    if not model or is_folder_path(model) or hub_id_problem(model) \
            or session.get(ModelEntry, model) is not None:
        return None
    missing = missing_model(model)
    if missing:
        missing["will_download"] = bool(settings) and downloads_allowed(settings.allow_downloads)
    return missing


def form_context(session: Session, spec: Method, values: dict | None = None,
                 errors: dict[str, str] | None = None, settings: Settings | None = None,
                 scale: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the form's templates draw. ``scale`` ({gpus, hosts}: scale_facts) says whether
    the scale knobs are offered; without it they are not (a single-process form)."""
    models = list(session.exec(select(ModelEntry).order_by(ModelEntry.id)))
    datasets = list(session.exec(select(DatasetEntry).order_by(DatasetEntry.id)))
    values = values or blank_form(spec, models, datasets)
    errors = errors or {}
    shown = {"name", "method", "model", "dataset"} | {f"params.{k.name}" for k in spec.knobs}
    return {
        "spec": spec, "groups": knob_groups(spec, scale, values), "method_help": METHOD_HELP,
        "scale": scale or NO_SCALE,
        "methods": [m for m in METHODS.values() if m.method not in NOT_IN_FORM],
        "method_key": method_key, "models": models, "datasets": datasets, "values": values,
        "demo_defaults": is_demo(chosen_model(values)),
        "demo_values": DEMO_DEFAULTS.get((spec.backend, spec.method), {})
        if is_demo(chosen_model(values)) else {},
        "model_missing": model_status(session, chosen_model(values), settings),
        "effective": effective_batch_of(spec, values),
        "errors": errors, "other_errors": {f: m for f, m in errors.items() if f not in shown},
    }


# --- what "clone" (/jobs/new?from=ID) and the "Train" links fill the form with -------------
def clone_values(session: Session, job_id: int) -> tuple[Method, dict[str, Any]] | None:
    """The new-job form's values for a copy of job ``job_id`` (None: no such job, a fuse or
    a generate job).

    The model and dataset go back into the pickers when they are still registered, else into
    the text fields; params the method no longer knows are dropped (the form shows its knobs).
    """
    job = session.get(Job, job_id)
    if job is None:
        return None
    try:
        spec = method_for(job.backend, job.method)
    except ParamError:
        return None
    if spec.method in NOT_IN_FORM:
        return None
    models = list(session.exec(select(ModelEntry)))
    datasets = list(session.exec(select(DatasetEntry)))
    values = blank_form(spec, models, datasets)
    values["method"] = method_key(spec)
    values["name"] = f"{job.name} (copy)"[:200] if job.name else ""
    dataset_ids = {d.id for d in datasets}
    pick_model(values, job.model, models)
    values["dataset_choice"], values["dataset_text"] = (
        (job.dataset, "") if job.dataset in dataset_ids else ("", job.dataset))
    for knob in spec.knobs:
        if knob.name in (job.params or {}):
            values[f"params.{knob.name}"] = knob_value(knob, job.params[knob.name])
    if job.tuning and spec.knob("tune") is not None:  # the tuned values, run exactly
        values["params.tune"] = "off"
    return spec, values


def pick_model(values: dict[str, Any], model: str, models: list[ModelEntry]) -> None:
    """Put ``model`` in the picker when it offers it (registered or in the HF cache), else
    in the text field beside it."""
    offered = {m.id for m in models} | {m["id"] for m in cached_models()}
    values["model_choice"], values["model_text"] = (
        (model, "") if model in offered else ("", model))


def prefilled_form(session: Session, from_job: int | None, model: str | None,
                   dataset: str | None = None, backend: str | None = None,
                   knobs: dict[str, str] | None = None,
                   method: str | None = None) -> tuple[Method, dict[str, Any] | None]:
    """The new-job form's method and values: a clone of ``from_job``, or the blank form with
    ``model`` and/or ``dataset`` picked, ``method`` (KTO unless a training method given) on
    ``backend`` (torch or mlx) and ``knobs``
    (name -> value as typed, e.g. init_adapter, desirable_weight) filled in where the
    method has them; (torch KTO, None) means the plain blank form."""
    spec = method_for("torch", "kto")
    cloned = clone_values(session, from_job) if from_job is not None else None
    if cloned is not None:
        return cloned
    if (backend or "").strip() in ("torch", "mlx"):
        wanted = (method or "kto").strip()
        if (backend.strip(), wanted) not in TRAINING_METHODS:
            wanted = "kto"  # a method the form does not offer: KTO, as without one
        spec = method_for(backend.strip(), wanted)
    model, dataset = (model or "").strip(), (dataset or "").strip()
    knobs = {k: v for k, v in (knobs or {}).items() if spec.knob(k) is not None}
    if not model and not dataset and not knobs and spec.backend == "torch":
        return spec, None
    models = list(session.exec(select(ModelEntry)))
    datasets = list(session.exec(select(DatasetEntry)))
    values = blank_form(spec, models, datasets)
    if model:
        pick_model(values, model, models)
        set_knob_defaults(values, spec)  # the chosen model's defaults (demo or not)
    if dataset:  # a registered one in the picker, anything else in the text field
        values["dataset_choice"], values["dataset_text"] = (
            (dataset, "") if dataset in {d.id for d in datasets} else ("", dataset))
    for name, value in knobs.items():  # as typed: the submit checks them
        values[f"params.{name}"] = value.strip()
    return spec, values
