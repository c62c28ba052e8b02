"""How long a job would run: the optimizer steps its settings imply and, from past runs of
the same model and method on this machine, the seconds (the new-job form's plan panel)."""

from __future__ import annotations

import math
from typing import Any

from sqlmodel import Session, select

from app.models import DatasetEntry, Job, JobStatus
from contract.knobs import Method, ParamError


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


def run_length(session: Session, spec: Method, params: dict[str, Any], model: str,
               dataset: str) -> dict[str, Any] | None:
    """Steps the settings imply and, once this model has trained here with this method, how
    long the run should take. None while a knob is invalid."""
    try:
        full = spec.validate(params)
    except ParamError:
        return None
    entry = session.get(DatasetEntry, dataset) if dataset else None
    out = implied_steps(spec, full, dataset_rows(entry, spec.method))
    past = list(session.exec(
        select(Job).where(Job.model == model, Job.backend == spec.backend,
                          Job.method == spec.method, Job.status == JobStatus.succeeded)
        .order_by(Job.id.desc()).limit(20)))
    out.update(estimate=estimate_seconds(out["samples"], past), model=model,
               method=f"{spec.backend} {spec.method.upper()}")
    return out
