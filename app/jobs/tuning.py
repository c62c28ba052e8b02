"""Auto-tuning on the server's side: the plan written before a ``tune: auto`` worker starts,
and the worker's choice folded into the job when its ``tune`` event comes in.

The plan (app/planner/tune.py) is made at launch, against the memory free then, and written
to ``<run_dir>/tune_plan.json``; a run folder that already holds the worker's choice
(``tune.json``: a resume, a restart) gets no new plan, so the worker reuses its choice.
The choice goes into ``job.params`` (the values actually used; ``tune`` stays "auto") and,
with what was tried, into ``job.tuning``: the job page's card, the API and compare read it
there. A clone sets ``tune: off`` and so reproduces the run exactly.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import object_session
from sqlmodel import select

from app.models import DatasetEntry, Job, JobStatus
from app.planner.check import machine, model_facts
from app.planner.run_length import dataset_rows, estimate_seconds, implied_steps
from app.planner.tune import label, tune_plan
from contract.knobs import ParamError, method_for
from contract.tune import (
    PLAN_FILE,
    RESULT_FILE,
    SPEED_KNOBS,
    effective_batch,
    read_plan,
    write_plan,
)

log = logging.getLogger("prospect.tuning")


def wants_tuning(job: Job) -> bool:
    return (job.params or {}).get("tune") == "auto" and \
        (job.backend, job.method) in SPEED_KNOBS


def kernels_installed() -> bool:
    """Whether liger-kernel is installed (found by its metadata: nothing is imported)."""
    try:
        importlib.metadata.version("liger-kernel")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def training_rows(job: Job) -> int | None:
    """The dataset's training rows: the registry's count, else the JSONL's lines."""
    session = object_session(job)
    entry = session.get(DatasetEntry, job.dataset) if session is not None else None
    if entry is not None and entry.rows:
        return dataset_rows(entry, job.method)
    path = Path(job.dataset_path or "")
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip()) or None


def expected_seconds(job: Job, rows: int | None) -> float | None:
    """The job's expected time from past runs of its model and method here (run_length)."""
    session = object_session(job)
    if session is None:
        return None
    spec = method_for(job.backend, job.method)
    samples = implied_steps(spec, job.params, rows)["samples"]
    past = list(session.exec(
        select(Job).where(Job.model == job.model, Job.backend == job.backend,
                          Job.method == job.method, Job.status == JobStatus.succeeded)
        .order_by(Job.id.desc()).limit(20)))
    est = estimate_seconds(samples, past)
    return est["seconds"] if est else None


def prepare_tune_plan(job: Job, min_timed_s: float = 10.0) -> Path | None:
    """Write ``tune_plan.json`` for a ``tune: auto`` job about to start; None when there is
    nothing to write (tuning off, a saved choice, a model the planner cannot read, or no
    setting that fits now: the worker then trains with the knobs as given). Never raises:
    a plan that cannot be made must not stop the job."""
    run_dir = Path(job.run_dir)
    if not wants_tuning(job):
        return None
    if (run_dir / RESULT_FILE).is_file():
        return None  # the worker reuses its saved choice
    try:
        facts, note = model_facts(job.model_path)
        if facts is None:
            log.info("job %s: no tuning plan: %s", job.id, note)
            return None
        rows = training_rows(job)
        plan = tune_plan(facts, job.backend, job.method, job.params, machine(),
                         expected_s=expected_seconds(job, rows), rows=rows,
                         kernels=kernels_installed())
        if plan is None:
            log.info("job %s: no tuning plan: no setting fits the memory free now", job.id)
            (run_dir / PLAN_FILE).unlink(missing_ok=True)
            return None
        plan.min_timed_s = min_timed_s  # the setting PROSPECT_TUNE_MIN_PROBE_S
        path = write_plan(run_dir, plan)
        log.info("job %s: tuning plan with %d candidates, probe budget %.0fs", job.id,
                 len(plan.candidates), plan.probe_budget_s)
        return path
    except Exception:  # noqa: BLE001 - a plan is an optimisation; the job starts regardless
        log.exception("job %s: the tuning plan could not be made", job.id)
        return None


def apply_tune(job: Job, data: dict[str, Any]) -> None:
    """Fold a ``tune`` event into the job: the chosen speed knobs into ``params`` (a new dict,
    so the JSON column is written), and the choice with what was tried into ``tuning``.
    Only the method's speed knobs are taken, and only if the result still validates and
    keeps the effective batch; anything else is logged and left out."""
    chosen = data.get("chosen") if isinstance(data.get("chosen"), dict) else {}
    allowed = SPEED_KNOBS.get((job.backend, job.method), ())
    picked = {k: v for k, v in chosen.items() if k in allowed}
    params = dict(job.params or {})
    asked = {k: params.get(k) for k in picked}
    merged = {**params, **picked}
    try:
        merged = method_for(job.backend, job.method).validate(merged)
        if effective_batch(job.backend, merged) != effective_batch(job.backend, params):
            raise ParamError("chosen", "changes the effective batch")
    except ParamError as exc:
        log.warning("job %s: ignored the tuned settings %s: %s", job.id, chosen, exc)
        picked, merged = {}, params
    job.params = {**params, **{k: merged[k] for k in picked}}
    job.tuning = {"chosen": picked, "asked": asked, **_plan_facts(job),
                  "tried": data.get("tried") if isinstance(data.get("tried"), list) else [],
                  "baseline_samples_per_s": data.get("baseline_samples_per_s"),
                  "probe_s": data.get("probe_s"), "message": str(data.get("message") or "")}


def _plan_facts(job: Job) -> dict[str, Any]:
    """From the plan the server wrote: the device's memory ("31 GiB of 139") and the batch."""
    try:
        plan = read_plan(Path(job.run_dir)) if job.run_dir else None
    except (OSError, ValueError, TypeError):
        plan = None
    if plan is None:
        return {}
    return {"device_total_bytes": plan.device_total_bytes,
            "effective_batch": plan.effective_batch, "planned": len(plan.candidates)}


def tuning_view(job: Job) -> dict[str, Any] | None:
    """What the job page's card shows of ``job.tuning``: the message, the chosen and asked
    settings in words, and one row per trial (setting, samples/s, × the seed defaults, peak
    memory, outcome). None for a job that was not tuned."""
    t = job.tuning
    if not t or job.backend not in ("torch", "mlx"):
        return None
    base = t.get("baseline_samples_per_s")
    chosen = t.get("chosen") or {}
    rows = []
    for trial in t.get("tried") or []:
        if not isinstance(trial, dict) or not isinstance(trial.get("settings"), dict):
            continue
        sps = trial.get("samples_per_s")
        rows.append({"label": label(job.backend, trial["settings"]),
                     "samples_per_s": sps if isinstance(sps, int | float) else None,
                     "ratio": sps / base if isinstance(sps, int | float) and
                     isinstance(base, int | float) and base > 0 else None,
                     "peak_bytes": trial.get("peak_bytes"),
                     "outcome": str(trial.get("outcome") or ""),
                     "note": str(trial.get("note") or ""),
                     "chosen": bool(chosen) and trial["settings"] == chosen})
    ok = [r for r in rows if r["chosen"]]
    return {"message": t.get("message") or "", "rows": rows,
            "chosen": label(job.backend, chosen) if chosen else "",
            "asked": label(job.backend, t.get("asked") or {}) if t.get("asked") else "",
            "ratio": ok[0]["ratio"] if ok else None, "probe_s": t.get("probe_s"),
            "device_total_bytes": t.get("device_total_bytes"),
            "effective_batch": t.get("effective_batch")}
