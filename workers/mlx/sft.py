"""LoRA SFT with mlx-lm's tuner, in-process. Reads top to bottom:

    load model → LoRA layers → mlx-lm datasets → Adam (+ checkpoint state on resume)
    → compiled step (mlx-lm's default loss) → loop: progress, metrics, eval, checkpoints
    → save the adapter.

The loop is mlx-lm's ``tuner.trainer.train`` with what it lacks for a job: a start step and
optimizer state on resume, a stop flag checked after each step, and events instead of prints.
Its pieces (``iterate_batches``, ``default_loss``, ``evaluate``, the datasets) are mlx-lm's own.

``grad_accumulation_steps`` accumulates as mlx-lm does (``SFTStep``), but a step here is one
optimizer update over batch_size × grad_accumulation_steps rows (``iters``, checkpoints and
progress count updates; mlx-lm's loop counts micro-batches), drawn as one batch of that size
from ``iterate_batches`` and cut into micro-batches: each update sees the same rows whatever
the split (``tune: auto`` changes only the split, workers/mlx/tune.py). Each micro-batch's
loss is its own token mean, as in mlx-lm, so a split weighs tokens a little differently
from one batch of all the rows unless the micro-batches hold equal token counts.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_map
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.trainer import default_loss, evaluate, iterate_batches

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import MLXSFTArgs
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
from workers.mlx.tune import probe_with, tuned
from workers.runtime import RunResult, StopFlag


class SFTStep:
    """One optimizer step of SFT over the micro-batches of one effective batch, accumulated
    as mlx-lm's trainer accumulates (``grad_accumulation_steps``): each micro-batch's gradient
    of its token-mean loss (``default_loss``) is added up, the sum averaged over processes and
    divided by the count, then one Adam update; compiled as mlx-lm compiles it. Returns (mean
    loss, tokens) of the step."""

    def __init__(self, model, optimizer, micro_batches: int = 1, compile: bool = True):
        self.micro_batches = micro_batches
        loss_value_and_grad = nn.value_and_grad(model, default_loss)
        self.state = [model.state, optimizer.state, mx.random.state]

        def step(batch, lengths, prev_grad, update):
            (loss, ntoks), grad = loss_value_and_grad(model, batch, lengths)
            if prev_grad is not None:
                grad = tree_map(lambda g, p: g + p, grad, prev_grad)
            if update:
                grad = average_gradients(grad)  # a no-op in one process
                if micro_batches > 1:
                    grad = tree_map(lambda g: g / micro_batches, grad)
                optimizer.update(model, grad)
                grad = None
            return loss, ntoks, grad

        # mlx-lm compiles the step always; on a CPU too (see the knob's help)
        self.step = mx.compile(step, inputs=self.state, outputs=self.state) if compile \
            else step

    def __call__(self, micro: list[tuple[mx.array, mx.array]]) -> tuple[mx.array, mx.array]:
        losses, ntoks, grad = [], [], None
        for i, (batch, lengths) in enumerate(micro):
            loss, n, grad = self.step(batch, lengths, grad, i == len(micro) - 1)
            mx.eval(self.state, loss, n, grad)
            losses.append(loss)
            ntoks.append(n)
        return mx.mean(mx.stack(losses)), sum(ntoks[1:], ntoks[0])


def split(batch: mx.array, lengths: mx.array, size: int) -> list[tuple[mx.array, mx.array]]:
    """One of ``iterate_batches``' batches cut into micro-batches of ``size`` rows, each
    trimmed to the width its own rows need (1 + a multiple of 32, as mlx-lm pads)."""
    out = []
    for i in range(0, batch.shape[0], size):
        part, spans = batch[i : i + size], lengths[i : i + size]
        longest = int(spans[:, 1].max().item())
        width = min(1 + 32 * -(-longest // 32), batch.shape[1])
        out.append((part[:, :width], spans))
    return out


def sft_probe(model, train_set, args: MLXSFTArgs):
    """The tuner's probe (workers/mlx/tune.py): steps of the job's first effective batch."""
    import mlx.optimizers as optim

    effective = args.batch_size * args.grad_accumulation_steps
    saved = np.random.get_state()  # iterate_batches seeds numpy's global generator
    first = next(iterate_batches(train_set, effective, args.max_seq_length, seed=args.seed))
    np.random.set_state(saved)

    def build(settings: dict):
        s = replace(args, **settings)
        step = SFTStep(model, optim.Adam(learning_rate=args.learning_rate),
                       s.grad_accumulation_steps, compile=s.compile)
        micro = split(*first, s.batch_size)
        return lambda: step(micro)

    return probe_with(model, build, effective)


def train(job: JobConfig[MLXSFTArgs], train_rows: list[dict], valid_rows: list[dict],
          events: EventWriter, stop: StopFlag, sampler: MemorySampler) -> RunResult:
    args = job.args
    model, tokenizer, num_layers, config = load_for_training(job, events, sampler)

    events.emit("status", phase="preparing_data",
                message=f"tokenizing {len(train_rows)} train and {len(valid_rows)} valid rows")
    options = SimpleNamespace(mask_prompt=args.mask_prompt)
    train_set = CacheDataset(create_dataset(train_rows, tokenizer, options))
    valid_set = CacheDataset(create_dataset(valid_rows, tokenizer, options)) if valid_rows \
        else None
    effective = args.batch_size * args.grad_accumulation_steps
    if len(train_set) < effective:
        raise ValueError(f"the train split has {len(train_set)} examples, fewer than "
                         f"batch_size={args.batch_size} × grad_accumulation_steps="
                         f"{args.grad_accumulation_steps} = {effective}")
    if valid_set is not None and (len(valid_set) < args.batch_size or args.val_batches == 0):
        events.emit("log", level="warning", message=f"no validation: {len(valid_set)} valid "
                    f"rows for batch_size {args.batch_size} (or val_batches is 0)")
        valid_set = None

    # Under `mlx.launch -n N` each process takes 1/N of every batch; gradients are averaged.
    world = mx.distributed.init()
    rank, size = world.rank(), world.size()
    stop_if_asked(stop, size, "while the processes loaded")
    memory = rank_memory(world, sampler)  # every rank's memory in rank 0's memory events

    # tune auto: the fastest measured split of the same effective batch (workers/mlx/tune.py)
    job = tuned(job, events, stop, partial(sft_probe, model, train_set, args), processes=size)
    args = job.args
    if "prospect" in config:  # the adapter records the values it was trained with
        config["prospect"]["params"] = args.to_params()
    if args.batch_size % size:
        raise ValueError(f"batch_size={args.batch_size} must be divisible by the {size} "
                         "processes of the distributed launch")
    optimizer, start, tokens = prepare_training(job, model)
    step = SFTStep(model, optimizer, args.grad_accumulation_steps, compile=args.compile)

    iters = args.iters  # optimizer updates, each of grad_accumulation_steps micro-batches
    batches = iterate_batches(train_set, effective, args.max_seq_length, loop=True,
                              seed=args.seed, comm_group=world)
    for _ in range(start):  # the same data order as an uninterrupted run
        next(batches)
    reporter = Reporter(events, iters, len(train_set), effective, start_step=start,
                        tokens=tokens)

    def validate(at: int) -> float:
        # The same validation batches every time (and after a resume): seeded, and the
        # training order's random state put back afterwards.
        saved = np.random.get_state()
        np.random.seed(args.seed)
        loss = evaluate(model, valid_set, args.batch_size, args.val_batches,
                        max_seq_length=args.max_seq_length)
        np.random.set_state(saved)
        model.train()
        events.emit("metric", step=at, values={"val_loss": loss})
        reporter.restart_clock(at)
        return loss

    stop.interrupt = False  # from here on SIGTERM only sets the flag; the loop acts on it
    events.emit("status", phase="training",
                message=f"resuming at step {start} from {job.resume_from_checkpoint}" if start
                else f"training {trainable_count(model):,} adapter parameters")
    model.train()
    val_loss = validate(start) if valid_set is not None and start == 0 else None

    def validate_now(at: int) -> None:  # between the report and the checkpoint
        nonlocal val_loss
        if valid_set is not None and (at % args.steps_per_eval == 0 or at == iters):
            val_loss = validate(at)

    started, it, cancelled = time.perf_counter(), start, False
    for it in range(start + 1, iters + 1):
        batch = next(batches)
        tic = time.perf_counter()
        loss, ntoks = step(split(*batch, args.batch_size // size))
        if size > 1:  # every process reports the whole batch, and stops at the same step
            loss = mx.distributed.all_sum(loss, stream=mx.cpu) / size
            ntoks = mx.distributed.all_sum(ntoks, stream=mx.cpu)
        stopping = agreed_stop(stop, size)
        reporter.add({"loss": loss.item()})
        reporter.step_done(it, int(ntoks.item()), time.perf_counter() - tic)
        cancelled = stopping and it < iters
        report_and_checkpoint(job, events, reporter, model, optimizer, config, it, cancelled,
                              rank, between=validate_now, memory=memory)
        if cancelled:
            break
    return finish(job, events, reporter, model, config, start=start, it=it,
                  runtime=time.perf_counter() - started, num_layers=num_layers, size=size,
                  rank=rank, cancelled=cancelled, val_loss=val_loss)
