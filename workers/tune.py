"""The auto-tuner's probe, the same on both backends: time a few steps of each candidate the
planner sent (contract/tune.py), skip those that run out of memory, keep within the probe's
time budget, and return the fastest. The backend supplies ``probe(settings, steps)``, which
runs ``steps`` timed training steps of a throwaway copy of the job in those settings and
returns ``(samples_per_s, peak_bytes)``; it raises on out-of-memory (``is_oom`` tells which
exceptions those are) and leaves the model as it found it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.events import EventWriter
from contract.tune import Trial, TunePlan, TuneResult, read_result, write_result
from workers.runtime import StopFlag

Probe = Callable[[dict[str, Any], int], tuple[float, int | None]]


def autotune(plan: TunePlan, probe: Probe, events: EventWriter, stop: StopFlag,
             is_oom: Callable[[BaseException], bool], run_dir: Path,
             describe: Callable[[TuneResult, TunePlan], str]) -> TuneResult | None:
    """The choice (also written to ``<run_dir>/tune.json`` and emitted as a ``tune`` event),
    or None when nothing could be measured (the job then trains with its knobs as given).
    A saved choice (a resume, a restart) is reused without probing."""
    saved = read_result(run_dir)
    if saved is not None:
        events.emit("status", phase="tuning", message=f"reusing the tuned settings: "
                    f"{saved.message}")
        return saved
    start = time.monotonic()
    tried: list[Trial] = []
    todo = [c.settings for c in plan.candidates]
    if plan.baseline and plan.baseline not in todo:
        todo.append(plan.baseline)  # measured last, for the "× the seed defaults" ratio
    for i, settings in enumerate(todo, 1):
        if stop.requested:
            break
        spent = time.monotonic() - start
        if spent > plan.probe_budget_s and settings != plan.baseline:
            tried.append(Trial(settings, "skipped", note="probe time used up"))
            continue
        events.emit("status", phase="tuning",
                    message=f"timing setting {i} of {len(todo)}: {settings}")
        t0 = time.monotonic()
        try:
            sps, peak = probe(settings, plan.probe_steps)
            tried.append(Trial(settings, "ok", samples_per_s=sps, peak_bytes=peak,
                               seconds=time.monotonic() - t0))
        except Exception as exc:  # noqa: BLE001 - an OOM or a failing setting: try the next
            outcome = "oom" if is_oom(exc) else "error"
            tried.append(Trial(settings, outcome, seconds=time.monotonic() - t0,
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
