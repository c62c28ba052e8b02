"""MLX KTO's held-out evaluation, as TRL 1.16's KTOTrainer evaluates (``evaluate`` →
``prediction_step`` → the same ``_compute_loss`` in eval mode, then ``log``).

- The held-out rows (``eval_fraction``; workers/runtime.py's split_for_eval) go in order, in
  batches of ``batch_size`` (the last one may be smaller), each with its own KL pairs (TRL
  rotates the completions within each batch of its eval dataset too). The model is in eval
  mode (no LoRA dropout) and nothing is differentiated.
- The terms per batch are the training step's: the reference, z0, the loss, the rewards.
- Reductions, TRL's: ``eval_loss`` is the mean over examples of each batch's loss (the
  Trainer repeats a batch's loss once per example); every other metric is the mean over the
  batches of its per-batch value, a batch without desirable (or undesirable) examples adding
  nothing to that side's metrics, and margins only from batches with both.
- Every ``steps_per_eval`` steps, and once after the last step when that was not one; not on
  a cancel (the run stops as soon as it can).
"""

from __future__ import annotations

from collections.abc import Callable

from contract.events import EventWriter
from workers.mlx.common import log_line

# TRL's metric names; "eval_" goes in front of each.
NAMES = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
         "logps/rejected")


def reduce_eval(results: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """(batch size, the batch's metrics) of every evaluation batch → the eval_ metrics."""
    examples = sum(size for size, _ in results)
    values = {"eval_loss": sum(size * m["loss"] for size, m in results) / examples}
    for name in NAMES:
        seen = [m[name] for _, m in results if name in m]
        if seen:
            values[f"eval_{name}"] = sum(seen) / len(seen)
    return values


class HeldOut:
    """The held-out examples of a run (tokenized), evaluated when due; ``last_loss`` is the
    latest eval_loss (the summary's)."""

    def __init__(self, examples: list[dict], batch_size: int, every: int, iters: int,
                 make_batch: Callable[[list[dict]], dict], events: EventWriter):
        self.examples, self.batch_size = examples, batch_size
        self.every, self.iters = every, iters
        self.make_batch = make_batch
        self.events = events
        self.last_loss: float | None = None

    def due(self, it: int, cancelled: bool) -> bool:
        return bool(self.examples) and not cancelled and (it % self.every == 0
                                                          or it == self.iters)

    def evaluate(self, it: int, model, measure: Callable[[dict], dict[str, float]]) -> dict:
        """Every held-out batch through ``measure`` (the step's terms, no gradient) in eval
        mode; one ``metric`` event at step ``it`` and a worker.log line."""
        model.eval()
        try:
            results = [(len(chunk), measure(self.make_batch(chunk)))
                       for chunk in (self.examples[i : i + self.batch_size]
                                     for i in range(0, len(self.examples), self.batch_size))]
        finally:
            model.train()
        values = reduce_eval(results)
        self.last_loss = values["eval_loss"]
        self.events.emit("metric", step=it, values=values)
        print(log_line(it, self.iters, values), flush=True)
        return values
