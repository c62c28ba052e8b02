"""LoRA SFT with mlx-lm's tuner, in-process. Reads top to bottom:

    load model → LoRA layers → mlx-lm datasets → Adam (+ checkpoint state on resume)
    → compiled step (mlx-lm's default loss) → loop: progress, metrics, eval, checkpoints
    → save the adapter.

The loop is mlx-lm's ``tuner.trainer.train`` with what it lacks for a job: a start step and
optimizer state on resume, a stop flag checked after each step, and events instead of prints.
Its pieces (``iterate_batches``, ``default_loss``, ``evaluate``, the datasets) are mlx-lm's own.
"""

from __future__ import annotations

import time
from functools import partial
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.utils import average_gradients
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.trainer import default_loss, evaluate, iterate_batches

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import MLXSFTArgs
from workers.memory import MemorySampler
from workers.mlx.common import (
    Reporter,
    finish,
    load_for_training,
    prepare_training,
    report_and_checkpoint,
    trainable_count,
)
from workers.runtime import RunResult, StopFlag


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
    if len(train_set) < args.batch_size:
        raise ValueError(f"the train split has {len(train_set)} examples, fewer than "
                         f"batch_size={args.batch_size}")
    if valid_set is not None and (len(valid_set) < args.batch_size or args.val_batches == 0):
        events.emit("log", level="warning", message=f"no validation: {len(valid_set)} valid "
                    f"rows for batch_size {args.batch_size} (or val_batches is 0)")
        valid_set = None

    # Under `mlx.launch -n N` each process takes 1/N of every batch; gradients are averaged.
    world = mx.distributed.init()
    rank, size = world.rank(), world.size()
    if args.batch_size % size:
        raise ValueError(f"batch_size={args.batch_size} must be divisible by the {size} "
                         "processes of the distributed launch")

    optimizer, start, tokens = prepare_training(job, model)

    loss_value_and_grad = nn.value_and_grad(model, default_loss)
    compiled_state = [model.state, optimizer.state, mx.random.state]

    def step(batch, lengths):
        (loss, ntoks), grad = loss_value_and_grad(model, batch, lengths)
        optimizer.update(model, average_gradients(grad))  # a no-op in one process
        return loss, ntoks

    if args.compile:  # mlx-lm compiles the step always; on a CPU too (see the knob's help)
        step = partial(mx.compile, inputs=compiled_state, outputs=compiled_state)(step)

    iters = args.iters
    batches = iterate_batches(train_set, args.batch_size, args.max_seq_length, loop=True,
                              seed=args.seed, comm_group=world)
    for _ in range(start):  # the same data order as an uninterrupted run
        next(batches)
    reporter = Reporter(events, iters, len(train_set), args.batch_size, start_step=start,
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
        loss, ntoks = step(*batch)
        mx.eval(compiled_state, loss, ntoks)
        if size > 1:  # every process reports the whole batch, and stops at the same step
            loss = mx.distributed.all_sum(loss, stream=mx.cpu) / size
            ntoks = mx.distributed.all_sum(ntoks, stream=mx.cpu)
            stopping = mx.distributed.all_sum(mx.array(int(stop())), stream=mx.cpu).item() > 0
        else:
            stopping = stop()
        reporter.add({"loss": loss.item()})
        reporter.step_done(it, int(ntoks.item()), time.perf_counter() - tic)
        cancelled = stopping and it < iters
        report_and_checkpoint(job, events, reporter, model, optimizer, config, it, cancelled,
                              rank, between=validate_now)
        if cancelled:
            break
    return finish(job, events, reporter, model, config, start=start, it=it,
                  runtime=time.perf_counter() - started, num_layers=num_layers, size=size,
                  rank=rank, cancelled=cancelled, val_loss=val_loss)
