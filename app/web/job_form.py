"""The new-job form's values: defaults, what a post means, and what carries over a swap.

The form draws one method's knobs (contract/knobs.py). Choosing another method or model swaps
the knob fieldset (``swap_values``): the person's own values carry over to the new method's
knob of the same meaning, everything else takes the new defaults. A post reads only what the
form showed: each checkbox comes with a hidden "false" before it, so an unchecked box is off
and a box that was never on the form is not a value at all (the method's default applies).
A post that carries another method's knobs (the person changed the method and submitted
before the swap) is refused, naming them, instead of silently running other settings.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.datastructures import FormData

from app.units import number
from contract.knobs import Knob, Method, ParamError

DEMO_MODEL, DEMO_DATASET = "tiny-demo", "demo-kto"
GROUP_TITLES = {
    "training": "Training", "kto": "KTO loss", "memory": "Memory", "lora": "LoRA adapter",
    "logging": "Logging and checkpoints", "hardware": "Hardware", "data": "Data",
}
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
    """The form's starting values: the knobs' own, or the demo's for the demo model."""
    values = spec.defaults()
    if is_demo(model):
        values.update(DEMO_DEFAULTS.get((spec.backend, spec.method), {}))
    return values


def chosen_model(values: dict[str, Any]) -> str:
    return str(values.get("model_text", "")).strip() or str(values.get("model_choice", ""))


def knob_groups(spec: Method) -> list[tuple[str, str, list[Knob]]]:
    """(group, title, knobs) in the order the groups first appear in contract.knobs."""
    groups: dict[str, list[Knob]] = {}
    for knob in spec.knobs:
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


# --- how long: steps from the settings, seconds from past runs on this machine ------------
def dataset_rows(entry: Any, method: str) -> int | None:
    """Training rows a registered dataset gives the method (paired rows count twice for KTO:
    each becomes a desirable and an undesirable row)."""
    rows = getattr(entry, "rows", None) if entry is not None else None
    if not rows:
        return None
    if method == "kto" and getattr(entry, "format", "") == "paired":
        return rows * 2
    return int(rows)


def implied_steps(spec: Method, params: dict[str, Any], rows: int | None) -> dict[str, Any]:
    """{"steps", "samples", "how"}: the optimizer steps the settings imply, and why.

    TRL (transformers' Trainer, one process): with max_steps -1, steps per epoch are
    ceil(ceil(rows / batch) / accumulation) and the total is ceil(epochs × that). mlx-lm
    runs ``iters`` steps of ``batch_size`` rows, whatever the dataset's size."""
    if spec.backend == "mlx":
        steps, batch = int(params["iters"]), int(params["batch_size"])
        return {"steps": steps, "samples": steps * batch,
                "how": f"iters {steps}, {batch} rows a step"}
    batch = int(params["per_device_train_batch_size"])
    accum = int(params["gradient_accumulation_steps"])
    per_step = batch * accum
    if int(params["max_steps"]) > 0:
        steps = int(params["max_steps"])
        return {"steps": steps, "samples": steps * per_step,
                "how": f"max_steps {steps}, {batch} × {accum} rows a step"}
    if not rows:
        return {"steps": None, "samples": None,
                "how": "max_steps -1: the number follows the dataset's size (not known here)"}
    epochs = float(params["num_train_epochs"])
    per_epoch = max(1, math.ceil(math.ceil(rows / batch) / accum))
    steps = math.ceil(epochs * per_epoch)
    return {"steps": steps, "samples": min(steps * per_step, math.ceil(epochs * rows)),
            "how": f"{epochs:g} epoch{'s' if epochs != 1 else ''} of {rows} rows at "
                   f"{batch} × {accum} rows a step: {per_epoch} steps an epoch"}


def estimate_seconds(samples: int | None, past: list[Any]) -> dict[str, Any] | None:
    """Seconds for ``samples`` rows from past succeeded runs (their summary's
    samples_per_s and the wall time around train_runtime_s for loading and saving)."""
    rates, setup = [], []
    for job in past:
        s = job.summary or {}
        rate, runtime = s.get("samples_per_s"), s.get("train_runtime_s")
        if not isinstance(rate, int | float) or rate <= 0:
            continue
        rates.append(1.0 / rate)
        if job.started_at and job.finished_at and isinstance(runtime, int | float):
            setup.append(max(0.0, (job.finished_at - job.started_at).total_seconds() - runtime))
    if not rates or not samples:
        return None
    rates.sort()
    setup.sort()
    per_sample = rates[len(rates) // 2]
    fixed = setup[len(setup) // 2] if setup else 0.0
    return {"seconds": fixed + samples * per_sample, "runs": len(rates),
            "per_sample_s": per_sample, "setup_s": fixed}


def run_length(session: Any, spec: Method, values: dict[str, Any],
               params: dict[str, Any]) -> dict[str, Any] | None:
    """Steps the form's settings imply and, once this model has trained here with this
    method, how long the run should take. None while a knob is invalid."""
    from sqlmodel import select

    from app.models import DatasetEntry, Job, JobStatus

    try:
        full = spec.validate(params)
    except ParamError:
        return None
    dataset = str(values.get("dataset_text", "")).strip() or \
        str(values.get("dataset_choice", ""))
    entry = session.get(DatasetEntry, dataset) if dataset else None
    out = implied_steps(spec, full, dataset_rows(entry, spec.method))
    model = chosen_model(values)
    past = list(session.exec(
        select(Job).where(Job.model == model, Job.backend == spec.backend,
                          Job.method == spec.method, Job.status == JobStatus.succeeded)
        .order_by(Job.id.desc()).limit(20)))
    out.update(estimate=estimate_seconds(out["samples"], past), model=model,
               method=f"{spec.backend} {spec.method.upper()}")
    return out
