"""The one exit for what training reports: a TrainerCallback that turns it into events.

Per optimizer step it does a few arithmetic operations and one ``progress`` line: no device
sync, no tensor reads. The numbers come from what the trainer has already computed.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from contract.events import EventWriter

# What HF adds to an evaluation's log: timings of the evaluation itself, not of the model.
EVAL_TIMINGS = frozenset({"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"})


class EventCallback(TrainerCallback):
    """metric on log (an evaluation's too), progress on step end, checkpoint on save; stops
    the run when asked.

    ``stop_requested`` is a callable (the SIGTERM flag). ``token_count`` returns the number of
    non-padding training tokens seen so far (TRL counts them for its ``num_tokens`` metric).
    """

    def __init__(self, events: EventWriter, stop_requested, token_count=None, window: int = 20):
        self.events = events
        self.stop_requested = stop_requested
        self.token_count = token_count or (lambda: 0)
        self.cancelled = False
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.last_eval_step: int | None = None  # the step of the last evaluation
        self.last_checkpoint: Path | None = None  # the last one saved completely
        self._recent: deque[tuple[float, int, int]] = deque(maxlen=window)  # (time, step, tokens)

    def on_train_begin(self, args, state, control, **kwargs):
        self._recent.clear()
        self._recent.append((time.perf_counter(), state.global_step, self.token_count()))

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_requested() and state.global_step < state.max_steps:
            # HF Trainer checks these right after this callback: it logs, saves
            # checkpoint-<step> (weights, optimizer, scheduler, RNG) and leaves the loop.
            self.cancelled = True
            control.should_log = True
            control.should_save = True
            control.should_evaluate = False  # an evaluation would only delay the stop
            control.should_training_stop = True
        now, step, tokens = time.perf_counter(), state.global_step, self.token_count()
        t0, step0, tokens0 = self._recent[0] if self._recent else (now, step, tokens)
        self._recent.append((now, step, tokens))
        elapsed = now - t0
        tokens_per_s = (tokens - tokens0) / elapsed if elapsed > 0 else None
        eta_s = None
        if elapsed > 0 and step > step0 and state.max_steps > 0:
            eta_s = round((state.max_steps - step) * elapsed / (step - step0), 1)
        self.events.emit(
            "progress",
            step=step,
            total_steps=state.max_steps,
            epoch=round(state.epoch, 4) if state.epoch is not None else None,
            tokens_per_s=round(tokens_per_s, 1) if tokens_per_s is not None else None,
            eta_s=eta_s,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:  # HF's end-of-run speed summary: it goes to the done event
            return
        values = {k: v for k, v in logs.items() if _is_number(v) and k not in EVAL_TIMINGS}
        if "loss" in values:
            self.last_loss = float(values["loss"])
        if "eval_loss" in values:  # an evaluation: TRL's metric names with HF's eval_ prefix
            self.last_eval_loss = float(values["eval_loss"])
            self.last_eval_step = state.global_step
        self.events.emit("metric", step=state.global_step, values=values)

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.last_checkpoint = path
        self.events.emit("checkpoint", step=state.global_step, path=str(path.resolve()))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
