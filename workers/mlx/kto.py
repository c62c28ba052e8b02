"""KTO in MLX with a LoRA adapter (Ethayarajh et al., 2024; docs/design.md, "KTO").

Reads top to bottom: load model → LoRA layers → tokenize as TRL does → per step:
reference terms (no gradient) → KTO loss and its gradient → Adam → events.

- Log-probs are the sums over the completion tokens only (the prompt is masked out).
- The reference model is the same model with the adapter switched off (LoRA scale 0): no
  second copy in memory. A run from an initial adapter (``init_adapter``) has that adapter,
  frozen, as its reference instead (workers/mlx/reference.py).
- z0, the KL reference point: each prompt x_i is paired with the completion of the example
  before it in the batch, y_{i-1} (TRL's rotation by one); z0 = max(0, mean of
  log πθ(y_{i-1}|x_i) − log πref(y_{i-1}|x_i)), not back-propagated (TRL computes it under
  no_grad and detaches it).
- Loss per example λD·(1 − σ(β(r − z0))) if desirable else λU·(1 − σ(β(z0 − r))),
  r = log πθ(y|x) − log πref(y|x); the batch loss is the mean over examples, as TRL's.
- ``grad_accumulation_steps`` (mlx-lm's): a step is one optimizer update over
  batch_size × grad_accumulation_steps rows, in micro-batches of batch_size whose gradients
  are averaged (each with its own KL pairs and z0, as TRL's per-device batches); ``iters``
  counts updates, and so do checkpoints.
- ``tune: auto``: the fastest measured split of that effective batch, checkpointing and
  compile (workers/mlx/tune.py) replace the knobs before training.
- Metrics are TRL's names and reductions: kl (= z0), rewards/chosen = mean β·r of the desirable
  examples, rewards/rejected, rewards/margins (when both are in the batch), logps/chosen,
  logps/rejected; averaged over each report interval.
- With ``eval_fraction`` a seeded split of the rows is held out (workers/runtime.py's
  split_for_eval) and evaluated every ``steps_per_eval`` steps, as TRL's evaluation reports
  it: the same terms as ``eval_…`` metrics (workers/mlx/kto_eval.py).
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_map

from contract.eval_split import split_rows
from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import MLXKTOArgs
from contract.rows import Row
from workers.memory import MemorySampler
from workers.mlx.common import (
    Reporter,
    agreed_stop,
    finish,
    load_for_training,
    prepare_training,
    rank_memory,
    report_and_checkpoint,
    stop_if_asked,
    trainable_count,
)
from workers.mlx.data import tokenize_kto
from workers.mlx.kto_eval import HeldOut
from workers.mlx.reference import add_init_adapter, as_reference, initial_reference
from workers.mlx.tune import micro_batches, probe_with, tuned
from workers.runtime import RunResult, StopFlag, split_for_eval


# --- the loss -------------------------------------------------------------------------------
def make_batch(examples: list[dict], max_length: int, pad_id: int) -> dict[str, mx.array]:
    """input_ids / completion_mask, and the KL pairs (x_i, y_{i-1}), right-padded, truncated
    to ``max_length`` from the end as TRL's collator does."""
    completions = [e["completion_ids"] for e in examples]
    kl_completions = [completions[-1], *completions[:-1]]
    out: dict[str, mx.array] = {}
    for prefix, answers in (("", completions), ("KL_", kl_completions)):
        seqs, masks = [], []
        for e, answer in zip(examples, answers, strict=True):
            seqs.append((e["prompt_ids"] + answer)[:max_length])
            masks.append(([0] * len(e["prompt_ids"]) + [1] * len(answer))[:max_length])
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
        mask = np.zeros((len(seqs), width), dtype=np.float32)
        for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
            ids[i, : len(s)] = s
            mask[i, : len(m)] = m
        out[f"{prefix}input_ids"] = mx.array(ids)
        out[f"{prefix}completion_mask"] = mx.array(mask)
    out["label"] = mx.array([bool(e["label"]) for e in examples])
    return out


def batch_tokens(examples: list[dict], max_length: int) -> int:
    """Non-padding tokens of the batch's main sequences (TRL's num_tokens counts these)."""
    return sum(min(len(e["prompt_ids"]) + len(e["completion_ids"]), max_length)
               for e in examples)


def completion_logps(model: nn.Module, input_ids: mx.array, mask: mx.array) -> mx.array:
    """Sum of log p(token) over the completion tokens of each sequence, in float32."""
    logits = model(input_ids[:, :-1]).astype(mx.float32)
    token_logps = -nn.losses.cross_entropy(logits, input_ids[:, 1:])
    return (token_logps * mask[:, 1:]).sum(axis=-1)


def reference_terms(model: nn.Module, batch: dict, size: int = 1,
                    reference=None) -> tuple[mx.array, mx.array]:
    """(reference log-probs of the batch, z0): constants for the gradient step. With several
    processes z0 is the mean over all of them, as TRL gathers it across devices. The reference
    is the adapter switched off, or the ``reference`` arrays (an initial adapter's)."""
    with as_reference(model, reference):
        ref_logps = completion_logps(model, batch["input_ids"], batch["completion_mask"])
        ref_kl = completion_logps(model, batch["KL_input_ids"], batch["KL_completion_mask"])
    kl_logps = completion_logps(model, batch["KL_input_ids"], batch["KL_completion_mask"])
    kl = mx.mean(kl_logps - ref_kl)
    if size > 1:
        kl = mx.distributed.all_sum(kl, stream=mx.cpu) / size
    z0 = mx.maximum(kl, 0.0)
    return mx.stop_gradient(ref_logps), mx.stop_gradient(z0)


def kto_loss(model, input_ids, completion_mask, labels, ref_logps, z0, beta: float,
             desirable_weight: float, undesirable_weight: float):
    """(mean KTO loss, policy log-probs): the first is differentiated, the second reported."""
    logps = completion_logps(model, input_ids, completion_mask)
    r = logps - ref_logps
    desirable = desirable_weight * (1 - mx.sigmoid(beta * (r - z0)))
    undesirable = undesirable_weight * (1 - mx.sigmoid(beta * (z0 - r)))
    return mx.where(labels, desirable, undesirable).mean(), logps


def batch_metrics(loss, logps, ref_logps, z0, labels, beta: float) -> dict[str, float]:
    """TRL's per-step metrics (a side missing from the batch is left out, as TRL does)."""
    logps_np, labels_np = np.array(logps), np.array(labels)
    rewards = beta * (logps_np - np.array(ref_logps))
    values = {"loss": loss.item(), "kl": z0.item()}
    for side, pick in (("chosen", labels_np), ("rejected", ~labels_np)):
        if pick.any():
            values[f"rewards/{side}"] = float(rewards[pick].mean())
            values[f"logps/{side}"] = float(logps_np[pick].mean())
    if "rewards/chosen" in values and "rewards/rejected" in values:
        values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
    return values


class KTOStep:
    """One optimizer step of KTO over one batch, or over the micro-batches of one effective
    batch (``grad_accumulation_steps``); returns the step's metrics.

    Accumulation is mlx-lm's: each micro-batch's gradient (of its mean loss) is added up, the
    sum divided by their count, then one update. Each micro-batch takes its own reference
    terms, so its KL pairs and z0 are its own, as TRL's KTO pairs within each per-device
    batch (its KL dataset is built in chunks of ``per_device_train_batch_size``): batch 2 ×
    accumulation 2 trains as batch 4 × 1 wherever z0 is the same (0 at a fresh adapter's
    first step), and otherwise takes each z0 over two rows instead of four.

    With ``compile`` each micro-batch's step (reference terms, loss, gradient, its sum with
    the ones before it, and Adam on the last) is one ``mx.compile``d function, as mlx-lm
    compiles SFT's: the model, optimizer and random state go in and out as captured state,
    the batch and the gradient so far go in as arrays, and nothing in it reads a value back
    (the metrics are read afterwards). The LoRA scale the reference passes set to 0 is a
    Python number, so it is traced as a constant, as the policy's is; an initial adapter's
    reference arrays are captured inputs too (never outputs: nothing changes them). A
    compiled function is
    traced again for each new input shape: the batch is padded on the right to a multiple of
    ``pad_to`` tokens (+1, as mlx-lm pads SFT's batches), so a few widths cover a run.
    Padding adds tokens outside every completion mask at the end of causal sequences: the
    log-probs are the same. LoRA dropout, if on, then draws its masks over the padded shape:
    other masks than the eager step's, from the same random state (``pad_to=None``: none).
    """

    def __init__(self, model, optimizer, beta: float, desirable_weight: float,
                 undesirable_weight: float, size: int = 1, compile: bool = True,
                 pad_to: int | None = 32, reference=None):
        self.model, self.optimizer = model, optimizer
        self.reference = reference  # None: the adapter switched off
        self.size = size  # processes of a distributed launch, each with its part of the batch
        self.beta = beta
        self.weights = (desirable_weight, undesirable_weight)
        self.value_and_grad = nn.value_and_grad(model, kto_loss)
        self.compile, self.pad_to = compile, pad_to
        self.state = [model.state, optimizer.state, mx.random.state]
        self._compiled: dict[tuple, object] = {}  # _step's first four arguments → its step

    def _step(self, update: bool, accumulated: bool, keep: bool, micro_batches: int, input_ids,
              completion_mask, kl_input_ids, kl_completion_mask, labels, prev_grads=None):
        """(loss, policy log-probs, reference log-probs, z0, the gradient sum so far when
        ``keep``, else None): the update applied if asked, with the mean of ``micro_batches``
        gradients (this one added to ``prev_grads`` when ``accumulated``)."""
        batch = {"input_ids": input_ids, "completion_mask": completion_mask,
                 "KL_input_ids": kl_input_ids, "KL_completion_mask": kl_completion_mask}
        ref_logps, z0 = reference_terms(self.model, batch, self.size, self.reference)
        (loss, logps), grads = self.value_and_grad(
            self.model, input_ids, completion_mask, labels, ref_logps, z0, self.beta,
            *self.weights)
        if accumulated:
            grads = tree_map(lambda g, p: g + p, grads, prev_grads)
        if update:
            grads = average_gradients(grads)  # over the processes: a no-op in one
            if micro_batches > 1:
                grads = tree_map(lambda g: g / micro_batches, grads)
            self.optimizer.update(self.model, grads)
        return loss, logps, ref_logps, z0, grads if keep else None

    def _compiled_step(self, update: bool, accumulated: bool, keep: bool, micro_batches: int):
        key = (update, accumulated, keep, micro_batches)
        if key not in self._compiled:
            inputs = self.state if self.reference is None else [*self.state, self.reference]
            self._compiled[key] = mx.compile(partial(self._step, *key),
                                             inputs=inputs, outputs=self.state)
        return self._compiled[key]

    def __call__(self, batch: dict | list[dict], update: bool = True) -> dict[str, float]:
        """One step over ``batch``, or over a list of micro-batches whose gradients add up to
        one update; the metrics are those of all their rows together."""
        micro = batch if isinstance(batch, list) else [batch]
        outs, grads = [], None
        for i, part in enumerate(micro):
            last = i == len(micro) - 1
            arrays = [part[k] for k in ("input_ids", "completion_mask", "KL_input_ids",
                                        "KL_completion_mask")]
            key = (update and last, update and i > 0, update and not last, len(micro))
            extra = (grads,) if key[1] else ()
            if self.compile:
                if self.pad_to:
                    arrays = pad_width(arrays, self.pad_to)
                *out, grads = self._compiled_step(*key)(*arrays, part["label"], *extra)
                mx.eval(self.state, out, grads)
            else:
                *out, grads = self._step(*key, *arrays, part["label"], *extra)
                mx.eval(self.model.parameters(), self.optimizer.state, out, grads)
            outs.append(out)
        loss = mx.mean(mx.stack([o[0] for o in outs]))
        logps, ref_logps = (mx.concatenate([o[j] for o in outs]) for j in (1, 2))
        z0 = mx.mean(mx.stack([o[3] for o in outs]))
        labels = mx.concatenate([part["label"] for part in micro])
        if self.size > 1:  # the metrics of the whole batch, from every process
            loss = mx.distributed.all_sum(loss, stream=mx.cpu) / self.size
            logps, ref_logps, labels = (
                mx.distributed.all_gather(x, stream=mx.cpu)
                for x in (logps, ref_logps, labels.astype(mx.int32)))
            labels = labels.astype(mx.bool_)
        return batch_metrics(loss, logps, ref_logps, z0, labels, self.beta)

    def measure(self, batch: dict) -> dict[str, float]:
        """The step's metrics on ``batch`` without a gradient or an update, eagerly, in this
        process alone (an evaluation batch: every process evaluates all of them)."""
        ref_logps, z0 = reference_terms(self.model, batch, 1, self.reference)
        loss, logps = kto_loss(self.model, batch["input_ids"], batch["completion_mask"],
                               batch["label"], ref_logps, z0, self.beta, *self.weights)
        mx.eval(loss, logps, ref_logps, z0)
        return batch_metrics(loss, logps, ref_logps, z0, batch["label"], self.beta)


def pad_width(arrays: list[mx.array], pad_to: int) -> list[mx.array]:
    """The (ids, mask, KL ids, KL mask) arrays right-padded with zeros to one common width,
    1 + a multiple of ``pad_to`` (the model reads width - 1 tokens): a compiled step meets few
    shapes. Zeros: a pad id that no mask counts (any id would do) and mask 0."""
    width = max(a.shape[1] for a in arrays)
    target = 1 + pad_to * -(-(width - 1) // pad_to)
    return [mx.pad(a, [(0, 0), (0, target - a.shape[1])]) for a in arrays]


def batch_order(n_rows: int, batch_size: int, seed: int):
    """Index lists of full batches, reshuffled each epoch by a generator of its own."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n_rows)
        for i in range(0, n_rows - batch_size + 1, batch_size):
            yield order[i : i + batch_size].tolist()


def kto_probe(model, examples: list[dict], args: MLXKTOArgs, pad_id: int, reference):
    """The tuner's probe (workers/mlx/tune.py): steps of the job's first effective batch."""
    effective = args.batch_size * args.grad_accumulation_steps
    rows = [examples[i] for i in next(batch_order(len(examples), effective, args.seed))]

    def build(settings: dict):
        s = replace(args, **settings)
        step = KTOStep(model, optim.Adam(learning_rate=args.learning_rate), args.beta,
                       args.desirable_weight, args.undesirable_weight, compile=s.compile,
                       reference=reference)
        micro = [make_batch(part, args.max_seq_length, pad_id)
                 for part in micro_batches(rows, s.batch_size)]
        return lambda: step(micro)

    return probe_with(model, build, effective)


# --- the job --------------------------------------------------------------------------------
def train(job: JobConfig[MLXKTOArgs], rows: list[Row], events: EventWriter,
          stop: StopFlag, sampler: MemorySampler) -> RunResult:
    args = job.args
    # Under `mlx.launch -n N` each process takes its 1/N of every batch (TRL's per-device
    # batch, with its own KL pairs); z0 and the gradients are averaged over the processes.
    world = mx.distributed.init()
    rank, size = world.rank(), world.size()
    stop_if_asked(stop, size, "while the processes started")
    memory = rank_memory(world, sampler)  # every rank's memory in rank 0's memory events
    rows, held_rows = held_out(job, rows, events, rank)
    model, tokenizer, num_layers, config = load_for_training(
        job, events, sampler, add_layers=add_init_adapter if args.init_adapter else None)
    # An initial adapter is the reference: taken now, before a resume loads a checkpoint.
    reference = initial_reference(model) if args.init_adapter else None

    events.emit("status", phase="preparing_data", message=f"tokenizing {len(rows)} rows")
    examples = tokenized(rows, tokenizer, args.max_seq_length, events)
    held_examples = tokenized(held_rows, tokenizer, args.max_seq_length, events, "held-out ")
    effective = args.batch_size * args.grad_accumulation_steps
    if len(examples) < effective:
        raise ValueError(f"the dataset has {len(examples)} usable examples, fewer than "
                         f"batch_size={args.batch_size} × grad_accumulation_steps="
                         f"{args.grad_accumulation_steps} = {effective}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # tune auto: the fastest measured split of the same effective batch (workers/mlx/tune.py)
    job = tuned(job, events, stop, partial(kto_probe, model, examples, args, pad_id,
                                           reference), processes=size)
    args = job.args
    if "prospect" in config:  # the adapter records the values it was trained with
        config["prospect"]["params"] = args.to_params()
    local = args.batch_size // size
    if args.batch_size % size or local < 2:
        raise ValueError(f"batch_size={args.batch_size} must split into {size} equal parts "
                         "of at least 2 (the processes of the distributed launch)")

    optimizer, start, tokens = prepare_training(job, model)
    step = KTOStep(model, optimizer, args.beta, args.desirable_weight, args.undesirable_weight,
                   size, compile=args.compile, reference=reference)

    iters = args.iters  # optimizer updates, each of grad_accumulation_steps micro-batches
    order = batch_order(len(examples), effective, args.seed)
    for _ in range(start):  # the same data order as an uninterrupted run
        next(order)
    reporter = Reporter(events, iters, len(examples), effective, start_step=start,
                        tokens=tokens)
    held = HeldOut(held_examples, args.batch_size, args.steps_per_eval, iters,
                   partial(make_batch, max_length=args.max_seq_length, pad_id=pad_id), events)

    def evaluate(it: int, cancelled: bool) -> None:
        if held.due(it, cancelled):
            held.evaluate(it, model, step.measure)
            reporter.restart_clock(it)

    stop.interrupt = False  # from here on SIGTERM only sets the flag; the loop acts on it
    stop_if_asked(stop, size, "while the processes loaded")
    events.emit("status", phase="training",
                message=f"resuming at step {start} from {job.resume_from_checkpoint}" if start
                else f"training {trainable_count(model):,} adapter parameters")
    model.train()
    started, it, cancelled = time.perf_counter(), start, False
    for it in range(start + 1, iters + 1):
        chosen = [examples[i] for i in next(order)]
        micro = [make_batch(part[rank * local : (rank + 1) * local], args.max_seq_length,
                            pad_id) for part in micro_batches(chosen, args.batch_size)]
        tic = time.perf_counter()
        reporter.add(step(micro))
        reporter.step_done(it, batch_tokens(chosen, args.max_seq_length),
                           time.perf_counter() - tic)
        stopping = agreed_stop(stop, size)  # every process stops at the same step
        cancelled = stopping and it < iters
        report_and_checkpoint(job, events, reporter, model, optimizer, config, it, cancelled,
                              rank, between=partial(evaluate, cancelled=cancelled),
                              memory=memory)
        if cancelled:
            break
    extra = {"eval_loss": held.last_loss} if held_examples else {}
    return finish(job, events, reporter, model, config, start=start, it=it,
                  runtime=time.perf_counter() - started, num_layers=num_layers, size=size,
                  rank=rank, cancelled=cancelled, **extra)


def held_out(job: JobConfig[MLXKTOArgs], rows: list[Row], events: EventWriter,
             rank: int) -> tuple[list[Row], list[Row]]:
    """(train rows, held-out rows) by ``eval_fraction``: rank 0 records the split in the run
    folder; the other processes of a distributed launch take the same one, writing nothing."""
    if rank == 0 or job.args.eval_fraction <= 0:
        return split_for_eval(job, rows, events)
    train_rows, held, _ = split_rows(rows, job.args.eval_fraction, job.args.seed)
    if len(held) < 2 or len(train_rows) < 2:
        raise ValueError("the held-out split leaves fewer than 2 rows on a side (rank 0's "
                         "error says more)")
    return train_rows, held


def tokenized(rows: list[Row], tokenizer, max_length: int, events: EventWriter,
              which: str = "") -> list[dict]:
    """The rows tokenized as TRL does; a warning counts those dropped."""
    examples, dropped = tokenize_kto(rows, tokenizer, max_length)
    if dropped:
        events.emit("log", level="warning", message=f"{dropped} {which}rows dropped: their "
                    f"prompt alone fills max_seq_length={max_length}")
    return examples
