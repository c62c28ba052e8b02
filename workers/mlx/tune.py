"""The MLX side of ``tune: auto`` (contract/tune.py, workers/tune.py): the probe that times a
few steps of the job's own step in each candidate's settings, and ``tuned``, which runs the
backend-neutral driver and hands back the job with the chosen knobs.

A probe builds the step as the job would (batch_size × grad_accumulation_steps = the job's
effective batch, grad_checkpoint, compile), runs one untimed step (it traces and, compiled,
builds the kernels), then times ``steps`` steps on the same rows: the job's first effective
batch, the same for every candidate. Its peak is ``mx.get_peak_memory`` after a reset. It
trains a fresh Adam on the live model, so afterwards the LoRA weights, the random state and
the layers' class (``grad_checkpoint`` patches it) are put back: the run then starts exactly
as an untuned run with the chosen values would.

Out of memory in MLX is a RuntimeError ("[METAL] Command buffer execution failed:
Insufficient Memory", "[malloc] Unable to allocate … bytes", "… out of memory"): ``is_oom``
matches those, so the driver records the candidate as "oom" and tries the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.tune import SPEED_KNOBS, TunePlan, effective_batch, read_plan
from workers import tune as driver

OOM_MARKERS = ("insufficient memory", "out of memory", "[malloc]", "unable to allocate",
               "bad_alloc", "outofmemory")

Step = Callable[[], None]  # one optimizer step of the probe's job


def is_oom(exc: BaseException) -> bool:
    """MLX's out-of-memory failures (Metal's and the CPU allocator's)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MARKERS)


@contextlib.contextmanager
def checkpointing(model: nn.Module, on: bool) -> Iterator[None]:
    """mlx-lm's ``grad_checkpoint`` on the model's blocks for the block, if ``on``; the
    blocks' class as it was afterwards (mlx-lm patches the class, not the instance)."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    cls = type(model.layers[0])
    own = vars(cls).get("__call__")
    if on:
        grad_checkpoint(model.layers[0])
    try:
        yield
    finally:
        if own is not None:
            cls.__call__ = own
        elif "__call__" in vars(cls):
            del cls.__call__


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """The trainable weights and MLX's random state as they were before the block."""
    weights = tree_map(lambda a: mx.array(a), model.trainable_parameters())
    key = mx.random.state[0]
    mx.eval(weights, key)
    try:
        yield
    finally:
        model.update(weights)
        hi, lo = (int(x) for x in key.tolist())  # mx.random.key(s) is the pair (s >> 32, s)
        mx.random.seed((hi << 32) | lo)  # the state has no setter; this key is the saved one
        mx.eval(model.parameters())
        mx.clear_cache()


def probe_with(model: nn.Module, build: Callable[[dict[str, Any]], Step],
               effective: int) -> driver.Probe:
    """``probe(settings, steps) -> (samples/s, peak bytes)``: ``build(settings)`` returns a
    function running one optimizer step of ``effective`` rows in those settings."""

    def probe(settings: dict[str, Any], steps: int) -> tuple[float, int]:
        with restored(model), checkpointing(model, bool(settings.get("grad_checkpoint"))):
            mx.reset_peak_memory()
            step = build(settings)
            step()  # traces (and compiles): not timed
            tic = time.perf_counter()
            for _ in range(max(steps, 1)):
                step()
            seconds = time.perf_counter() - tic
            return max(steps, 1) * effective / seconds, int(mx.get_peak_memory())

    return probe


def micro_batches(rows: list, batch_size: int) -> list[list]:
    """The effective batch's rows cut into micro-batches of ``batch_size``, in order."""
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def chosen_values(job: JobConfig, chosen: dict[str, Any]) -> dict[str, Any] | None:
    """The tuned knobs this job may take: the method's speed knobs only, and only if they
    keep the effective batch; None when they do not (a plan for another job)."""
    names = SPEED_KNOBS[("mlx", job.method)]
    values = {k: v for k, v in chosen.items() if k in names}
    params = {**dataclasses.asdict(job.args), **values}
    if effective_batch("mlx", params) != effective_batch("mlx", dataclasses.asdict(job.args)):
        return None
    return values


def tuned(job: JobConfig, events: EventWriter, stop: Callable[[], bool],
          probe: Callable[[], driver.Probe], processes: int = 1) -> JobConfig:
    """The job to train: with ``tune: auto`` and a plan from the server (or a saved choice),
    its knobs replaced by the fastest measured setting; else the job as given. ``probe()``
    builds the probe (only called when there is something to time)."""
    if job.args.tune != "auto":
        return job
    plan = read_plan(job.run_dir)
    if processes > 1:
        events.emit("log", level="info", message="tune auto: not tuned under a distributed "
                    "launch; training with the knobs as given")
        return job
    if plan is None:  # a resume may find only tune.json; none at all: nothing to choose from
        plan = TunePlan(candidates=[], baseline={}, budget_bytes=0)
    result = driver.autotune(plan, _Lazy(probe), events, stop, is_oom, job.run_dir)
    if result is None:
        if plan.candidates:
            events.emit("log", level="warning", message="tune auto: no setting could be "
                        "measured; training with the knobs as given")
        return job
    values = chosen_values(job, result.chosen)
    if values is None:
        events.emit("log", level="warning", message=f"tune auto: the chosen {result.chosen} "
                    "would change the effective batch; training with the knobs as given")
        return job
    return dataclasses.replace(job, args=dataclasses.replace(job.args, **values))


class _Lazy:
    """The probe, built on its first call (a saved choice never builds it)."""

    def __init__(self, build: Callable[[], driver.Probe]):
        self.build, self.probe = build, None

    def __call__(self, settings: dict[str, Any], steps: int) -> tuple[float, int | None]:
        if self.probe is None:
            self.probe = self.build()
        return self.probe(settings, steps)
