"""Auto-tuning (the ``tune`` knob): what the server's planner hands the worker, and what the
worker tells back.

``tune: auto`` keeps every knob that changes the result (the effective batch, learning rate,
steps, β, weights, LoRA shape, max length) and chooses those that only change speed and
memory (``SPEED_KNOBS``). The server's planner prunes to the candidates that fit with a
margin and writes them, fastest-first by its estimate, to ``<run_dir>/tune_plan.json``; the
worker times a few steps of each (workers/tune.py), trains with the fastest, writes its choice
to ``<run_dir>/tune.json`` (a resume or a restart reuses it and probes nothing) and emits one
``tune`` event whose fields are ``TuneResult.event_fields()``. The server then records the
chosen values in the job's params, so a clone with ``tune: off`` reproduces the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PLAN_FILE = "tune_plan.json"
RESULT_FILE = "tune.json"
TUNE_CHOICES = ("auto", "off")

# (backend, method) -> the knobs auto-tuning may choose; everything else is kept as given.
SPEED_KNOBS: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "kto"): ("per_device_train_batch_size", "gradient_accumulation_steps",
                       "gradient_checkpointing", "precompute_ref_log_probs",
                       "use_liger_kernel", "dtype"),
    ("mlx", "kto"): ("batch_size", "grad_accumulation_steps", "grad_checkpoint", "compile"),
    ("mlx", "sft"): ("batch_size", "grad_accumulation_steps", "grad_checkpoint", "compile"),
}
# The knobs whose product is the effective batch, per backend.
BATCH_KNOBS = {"torch": ("per_device_train_batch_size", "gradient_accumulation_steps"),
               "mlx": ("batch_size", "grad_accumulation_steps")}


def effective_batch(backend: str, params: dict[str, Any]) -> int:
    """Examples per optimizer update: per-device batch × accumulation."""
    batch, accum = BATCH_KNOBS[backend]
    return int(params.get(batch, 1)) * int(params.get(accum, 1) or 1)


@dataclass
class Candidate:
    settings: dict[str, Any]          # speed knobs only: name -> value
    estimate_bytes: int = 0           # the planner's peak estimate for this setting
    label: str = ""                   # "batch 16 × 1, no checkpointing"


@dataclass
class TunePlan:
    candidates: list[Candidate]       # fit with a margin; the planner's fastest first
    baseline: dict[str, Any]          # the seed defaults' speed knobs (the "× the seed" ratio)
    budget_bytes: int                 # what the device may use (the planner's budget)
    device_total_bytes: int = 0       # for "31 GB of 139"
    probe_budget_s: float = 90.0      # wall time the probe may take, all candidates together
    probe_steps: int = 3              # timed steps per candidate (after one warm-up step)
    effective_batch: int = 0
    min_timed_s: float = 10.0         # a smaller probe budget: the first candidate, untimed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TunePlan:
        raw = dict(raw)
        raw["candidates"] = [Candidate(**c) for c in raw.get("candidates", [])]
        return cls(**raw)


@dataclass
class Trial:
    settings: dict[str, Any]
    outcome: str                      # ok | oom | error | skipped | planned (not timed)
    samples_per_s: float | None = None
    peak_bytes: int | None = None
    seconds: float = 0.0
    note: str = ""


@dataclass
class TuneResult:
    chosen: dict[str, Any]
    tried: list[Trial] = field(default_factory=list)
    baseline_samples_per_s: float | None = None
    probe_s: float = 0.0
    message: str = ""

    def event_fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TuneResult:
        raw = dict(raw)
        raw["tried"] = [Trial(**t) for t in raw.get("tried", [])]
        return cls(**raw)


def _write(run_dir: Path, name: str, data: dict[str, Any]) -> Path:
    path = Path(run_dir) / name
    path.write_text(json.dumps(data, indent=2))
    return path


def _read(run_dir: Path, name: str) -> dict[str, Any] | None:
    path = Path(run_dir) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_plan(run_dir: Path, plan: TunePlan) -> Path:
    return _write(run_dir, PLAN_FILE, plan.to_json())


def read_plan(run_dir: Path) -> TunePlan | None:
    raw = _read(run_dir, PLAN_FILE)
    return None if raw is None else TunePlan.from_json(raw)


def write_result(run_dir: Path, result: TuneResult) -> Path:
    return _write(run_dir, RESULT_FILE, result.event_fields())


def read_result(run_dir: Path) -> TuneResult | None:
    raw = _read(run_dir, RESULT_FILE)
    return None if raw is None else TuneResult.from_json(raw)
