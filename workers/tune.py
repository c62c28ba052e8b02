"""The auto-tuner's probe, the same on both backends: time a few steps of each candidate the
planner sent (contract/tune.py), skip those that run out of memory, keep within the probe's
time budget, and return the fastest. The backend supplies ``probe(settings, steps)``, which
runs ``steps`` timed training steps of a throwaway copy of the job in those settings and
returns ``(samples_per_s, peak_bytes)``; it raises on out-of-memory (``is_oom`` tells which
exceptions those are), raises ``SkipSetting`` for a setting it cannot run here (a kernel not
installed), and leaves the model as it found it.

Probe steps are never training steps: the run itself starts afterwards, from the same weights
and the same seed, so a tuned run trains exactly as an untuned run with the chosen values.
``describe`` builds the one-line message both backends show ("tried 4 settings: …; chose
batch 16 × 1, no checkpointing: 7.9× the seed defaults, 31 GiB of 139").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.events import EventWriter
from contract.tune import Trial, TunePlan, TuneResult, read_result, write_result

Probe = Callable[[dict[str, Any], int], tuple[float, int | None]]


class SkipSetting(Exception):  # noqa: N818 - not an error: the setting cannot run here
    """Raised by a probe for a setting this machine cannot run (recorded as "skipped")."""


def autotune(plan: TunePlan, probe: Probe, events: EventWriter, stop: Callable[[], bool],
             is_oom: Callable[[BaseException], bool], run_dir: Path) -> TuneResult | None:
    """The choice (also written to ``<run_dir>/tune.json`` and emitted as a ``tune`` event),
    or None when nothing could be measured (the job then trains with its knobs as given).
    A saved choice (a resume, a restart) is reused without probing. ``stop`` is the SIGTERM
    flag (workers.runtime.StopFlag is callable); a signal while a probe runs raises Cancelled
    out of it (the flag's interrupt is on before training), which this lets through."""
    saved = read_result(run_dir)
    if saved is not None:
        events.emit("status", phase="tuning",
                    message=f"reusing the tuned settings: {saved.message}")
        return saved
    if plan.candidates and plan.probe_budget_s < plan.min_timed_s:
        return _planned(plan, events, run_dir)
    start = time.monotonic()
    tried: list[Trial] = []
    estimates = {_key(c.settings): c.estimate_bytes for c in plan.candidates}
    todo = [c.settings for c in plan.candidates]
    if plan.baseline and plan.baseline not in todo:
        todo.append(plan.baseline)  # measured last, for the "× the seed defaults" ratio
    oom_at: int | None = None  # the smallest estimate that ran out of memory
    for i, settings in enumerate(todo, 1):
        if stop():
            break
        estimate = estimates.get(_key(settings)) or 0
        # The first is always measured; the rest, the seed defaults too, within the budget.
        measured = any(t.outcome == "ok" for t in tried)
        if measured and time.monotonic() - start > plan.probe_budget_s:
            tried.append(Trial(settings, "skipped", note="probe time used up"))
            continue
        if oom_at is not None and estimate >= oom_at and settings != plan.baseline:
            tried.append(Trial(settings, "skipped",
                               note="needs more memory than a setting that ran out of it"))
            continue
        events.emit("status", phase="tuning",
                    message=f"timing setting {i} of {len(todo)}: {label(settings)}")
        t0 = time.monotonic()
        try:
            sps, peak = probe(settings, plan.probe_steps)
            tried.append(Trial(settings, "ok", samples_per_s=round(sps, 4), peak_bytes=peak,
                               seconds=round(time.monotonic() - t0, 2)))
        except SkipSetting as exc:
            tried.append(Trial(settings, "skipped", note=str(exc)[:300]))
        except Exception as exc:  # noqa: BLE001 - an OOM or a failing setting: try the next
            outcome = "oom" if is_oom(exc) else "error"
            if outcome == "oom" and estimate:
                oom_at = min(oom_at or estimate, estimate)
            tried.append(Trial(settings, outcome, seconds=round(time.monotonic() - t0, 2),
                               note=f"{type(exc).__name__}: {exc}"[:300]))
    ok = [t for t in tried if t.outcome == "ok" and t.samples_per_s]
    if not ok:
        return None
    best = max(ok, key=lambda t: t.samples_per_s or 0.0)
    base = next((t for t in ok if t.settings == plan.baseline), None)
    result = TuneResult(chosen=dict(best.settings), tried=tried,
                        baseline_samples_per_s=base.samples_per_s if base else None,
                        probe_s=round(time.monotonic() - start, 2))
    result.message = describe(result, plan)
    write_result(run_dir, result)
    events.emit("tune", **result.event_fields())
    return result


def _planned(plan: TunePlan, events: EventWriter, run_dir: Path, note: str | None = None,
             record: bool = True) -> TuneResult:
    """The plan's first setting, untimed: timing one setting costs a throwaway trainer and a
    warm-up (7 s for a 0.5B model on an H200, issue 14), more than a job this short saves.
    ``note``: why it is not timed (default: the job is too short); ``record``: write
    tune.json (under a distributed launch every rank takes the choice, rank 0 records it)."""
    first = plan.candidates[0]
    note = note or (f"not timed: the job is too short ({plan.probe_budget_s:.1f} s of probe "
                    f"budget, 5% of its expected time; timing needs {plan.min_timed_s:.0f} s)")
    result = TuneResult(chosen=dict(first.settings),
                        tried=[Trial(dict(first.settings), "planned", note=note)])
    used = f", about {size(first.estimate_bytes)} planned" if first.estimate_bytes else ""
    result.message = (f"chose {label(first.settings)} from the memory plan, {note}{used}")
    if record:
        write_result(run_dir, result)
    events.emit("tune", **result.event_fields())
    return result


def _key(settings: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in settings.items()))


# --- the message ------------------------------------------------------------------------------
# Both backends' names for the same thing (contract/tune.py SPEED_KNOBS).
_BATCH = ("per_device_train_batch_size", "batch_size")
_ACCUM = ("gradient_accumulation_steps", "grad_accumulation_steps")
_CHECKPOINT = ("gradient_checkpointing", "grad_checkpoint")


def label(settings: dict[str, Any]) -> str:
    """A setting as a person reads it: "batch 16 × 1, no checkpointing, precomputed reference"."""
    parts: list[str] = []
    batch = next((settings[k] for k in _BATCH if k in settings), None)
    accum = next((settings[k] for k in _ACCUM if k in settings), None)
    if batch is not None:
        parts.append(f"batch {batch} × {accum if accum is not None else 1}")
    elif accum is not None:
        parts.append(f"accumulation {accum}")
    for key, value in settings.items():
        if key in _BATCH or key in _ACCUM:
            continue
        if key in _CHECKPOINT:
            parts.append("checkpointing" if value else "no checkpointing")
        elif key == "precompute_ref_log_probs":
            if value:
                parts.append("precomputed reference")
        elif key == "use_liger_kernel":
            if value:
                parts.append("Liger kernels")
        elif key == "compile":
            parts.append("compiled" if value else "not compiled")
        elif key == "dtype":
            parts.append(str(value))
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts) or "as given"


def size(n: int | float) -> str:
    """Bytes in GiB (MiB below one): "31 GiB", "2.5 GiB", "640 MiB"."""
    gib = n / 2**30
    if gib >= 10:
        return f"{gib:.0f} GiB"
    if gib >= 1:
        return f"{gib:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def _of_total(peak: int, total: int) -> str:
    if not total:
        return size(peak)
    gib = total / 2**30
    unit = size(peak)
    if unit.endswith("GiB"):
        return f"{unit[:-4]} GiB of {gib:.0f}" if gib >= 10 else f"{unit[:-4]} GiB of {gib:.1f}"
    return f"{unit} of {gib:.0f} GiB"


def _trial(t: Trial) -> str:
    if t.outcome == "ok":
        return f"{label(t.settings)} {t.samples_per_s:.3g}/s"
    what = {"oom": "out of memory", "error": "failed", "skipped": "skipped",
            "planned": "chosen by the plan"}.get(t.outcome,
                                                                                t.outcome)
    return f"{label(t.settings)} {what}"


def describe(result: TuneResult, plan: TunePlan) -> str:
    """'tried 4 settings: batch 16 × 1, no checkpointing 31.2/s; …; chose batch 16 × 1,
    no checkpointing: 7.9× the seed defaults, 31 GiB of 139'."""
    ran = [t for t in result.tried if t.outcome != "skipped"]
    skipped = len(result.tried) - len(ran)
    head = f"tried {len(ran)} setting{'s' if len(ran) != 1 else ''}"
    if skipped:
        head += f" ({skipped} skipped)"
    tried = "; ".join(_trial(t) for t in result.tried)
    best = next((t for t in result.tried if t.outcome == "ok" and t.settings == result.chosen),
                None)
    tail = [f"chose {label(result.chosen)}"]
    facts = []
    sps = best.samples_per_s if best else None
    if result.chosen == plan.baseline:
        facts.append("the seed defaults were the fastest")
    elif sps and result.baseline_samples_per_s:
        facts.append(f"{sps / result.baseline_samples_per_s:.1f}× the seed defaults")
    if best and best.peak_bytes:
        facts.append(_of_total(best.peak_bytes, plan.device_total_bytes))
    return f"{head}: {tried}; {tail[0]}" + (f": {', '.join(facts)}" if facts else "")
