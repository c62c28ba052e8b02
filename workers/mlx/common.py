"""What both MLX methods share: loading the model, the LoRA layers, checkpoints, the adapter
folder, and one reporter that turns steps into ``progress`` and ``metric`` events.

A checkpoint is ``checkpoints/checkpoint-<step>/`` holding the adapter (``adapters.safetensors``
and ``adapter_config.json``, loadable like the final adapter), the optimizer state
(``optimizer.safetensors``) and ``state.json`` (step, tokens seen). mlx-lm itself reloads only
the weights and starts again at iteration 1; a Prospect job continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import MLXSFTArgs, MLXTrainArgs
from workers.model_source import model_source
from workers.runtime import RunResult, loading_model

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
KEEP_CHECKPOINTS = 3


def load_model(model_id: str, **kwargs):
    """(model, tokenizer) from a local folder or the hub cache (offline), as mlx-lm loads it;
    ``kwargs`` go to ``mlx_lm.load`` (adapter_path, return_config)."""
    source = model_source(model_id)  # an absolute folder: never relative to the cwd
    with loading_model(source):  # missing or broken files: ModelNotFound
        return load(source, **kwargs)


def fine_tune_type(args: MLXTrainArgs) -> str:
    """lora or dora: SFT's knob; KTO trains LoRA."""
    return args.fine_tune_type if isinstance(args, MLXSFTArgs) else "lora"


def lora_parameters(args: MLXTrainArgs) -> dict[str, Any]:
    return {"rank": args.rank, "scale": args.scale, "dropout": args.dropout}


def adapter_config(job: JobConfig[MLXTrainArgs], num_layers: int) -> dict[str, Any]:
    """mlx-lm's adapter_config.json: what ``mlx_lm.load(..., adapter_path=)`` reads back."""
    return {
        "model": job.model,
        "fine_tune_type": fine_tune_type(job.args),
        "num_layers": num_layers,
        "lora_parameters": lora_parameters(job.args),
        "prospect": {"job_id": job.job_id, "method": job.method,
                     "params": job.args.to_params()},
    }


def add_lora(model: nn.Module, job: JobConfig[MLXTrainArgs]) -> int:
    """Freeze the base, put LoRA (or DoRA) on the last num_layers blocks; return that count."""
    args = job.args
    mx.random.seed(args.seed)
    model.freeze()
    num_layers = min(args.num_layers, len(model.layers))
    linear_to_lora_layers(model, num_layers, lora_parameters(args),
                          use_dora=fine_tune_type(args) == "dora")
    return num_layers


def trainable_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def save_adapter(model: nn.Module, folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(folder / ADAPTER_FILE), weights)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def save_checkpoint(job: JobConfig[MLXTrainArgs], model, optimizer, config: dict, step: int,
                    extra: dict[str, Any]) -> Path:
    """Write checkpoint-<step> into a temp folder, then rename: a checkpoint is whole or absent."""
    job.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = job.checkpoints_dir / f"checkpoint-{step}"
    tmp = job.checkpoints_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp, config)
    mx.save_safetensors(str(tmp / OPTIMIZER_FILE), dict(tree_flatten(optimizer.state)))
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **extra}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    old = sorted(job.checkpoints_dir.glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    for path in old[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model, optimizer) -> dict[str, Any]:
    """Adapter weights and optimizer state back in place; return state.json."""
    model.load_weights(str(folder / ADAPTER_FILE), strict=False)
    optimizer.init(model.trainable_parameters())
    for key, value in mx.load(str(folder / OPTIMIZER_FILE)).items():
        _set_path(optimizer.state, key.split("."), value)
    mx.eval(model.parameters(), optimizer.state)
    return json.loads((folder / STATE_FILE).read_text())


def _set_path(tree, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree[int(key)] if isinstance(tree, list) else tree.setdefault(key, {})
    if isinstance(tree, list):
        tree[int(keys[-1])] = value
    else:
        tree[keys[-1]] = value


class Reporter:
    """One ``progress`` event per step (tokens/s and ETA over a recent window); metrics
    averaged over each report interval, as TRL and mlx-lm report them."""

    def __init__(self, events: EventWriter, total_steps: int, rows: int, batch_size: int,
                 start_step: int = 0, tokens: int = 0, window: int = 20):
        self.events = events
        self.total_steps = total_steps
        self.rows = max(rows, 1)
        self.batch_size = batch_size
        self.tokens = tokens  # seen so far, a resumed run's earlier ones included
        self.last_loss: float | None = None
        self._recent: deque[tuple[float, int, int]] = deque(maxlen=window)
        self._recent.append((time.perf_counter(), start_step, tokens))
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._interval_tokens = 0
        self._interval_time = 0.0

    def restart_clock(self, step: int) -> None:
        """After an evaluation or a save: that time is not training time."""
        self._recent.clear()
        self._recent.append((time.perf_counter(), step, self.tokens))

    def step_done(self, step: int, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self._interval_tokens += tokens
        self._interval_time += seconds
        now = time.perf_counter()
        t0, step0, tokens0 = self._recent[0]
        self._recent.append((now, step, self.tokens))
        elapsed = now - t0
        tokens_per_s = (self.tokens - tokens0) / elapsed if elapsed > 0 else None
        eta = (self.total_steps - step) * elapsed / (step - step0) if step > step0 else None
        self.events.emit(
            "progress",
            step=step,
            total_steps=self.total_steps,
            epoch=round(step * self.batch_size / self.rows, 4),
            tokens_per_s=round(tokens_per_s, 1) if tokens_per_s is not None else None,
            eta_s=round(eta, 1) if eta is not None else None,
        )

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def report(self, step: int, extra: dict[str, float]) -> dict[str, float]:
        values = {name: self._sums[name] / self._counts[name] for name in self._sums}
        if self._interval_time > 0:
            values["tokens_per_s"] = self._interval_tokens / self._interval_time
        values.update(extra)
        values["peak_memory_gb"] = mx.get_peak_memory() / 1e9
        if "loss" in values:
            self.last_loss = values["loss"]
        self.events.emit("metric", step=step, values=values)
        print(log_line(step, self.total_steps, values), flush=True)
        self._sums, self._counts = {}, {}
        self._interval_tokens, self._interval_time = 0, 0.0
        return values


def device_name() -> str:
    """'gpu' or 'cpu': what a person reads (str() gives "Device(cpu, 0)")."""
    device = mx.default_device()
    return getattr(device.type, "name", str(device))


def log_line(step: int, total: int, values: dict[str, float]) -> str:
    """One worker.log line per report, as TRL prints one per logging step (stdout goes to
    worker.log): the step and the interval's metrics."""
    shown = ", ".join(f"{name} {value:.6g}" for name, value in values.items()
                      if isinstance(value, int | float))
    return f"step {step}/{total}: {shown}"


def load_for_training(job: JobConfig[MLXTrainArgs], events: EventWriter, sampler,
                      add_layers=None):
    """The model with LoRA layers on it, for both methods: returns (model, tokenizer, number
    of adapted blocks, the adapter_config.json to save). ``add_layers(model, job, events)``,
    when given, builds the layers instead and returns (blocks, config): a KTO job's initial
    adapter (workers/mlx/reference.py). Memory events report MLX from here."""
    from workers.memory import mlx_probe

    sampler.backend_probe = mlx_probe
    events.emit("status", phase="loading_model",
                message=f"loading {job.model} with mlx-lm on {device_name()}")
    model, tokenizer = load_model(job.model)
    if add_layers is not None:  # KTO from an adapter: its shape and weights
        num_layers, config = add_layers(model, job, events)
        return model, tokenizer, num_layers, config
    num_layers = add_lora(model, job)
    if num_layers < job.args.num_layers:
        events.emit("log", level="info", message=f"the model has {num_layers} blocks: LoRA "
                    f"goes on all of them (num_layers={job.args.num_layers})")
    return model, tokenizer, num_layers, adapter_config(job, num_layers)


def prepare_training(job: JobConfig[MLXTrainArgs], model: nn.Module):
    """Adam, with its state, the step and the token count restored on resume; gradient
    checkpointing when asked. Returns (optimizer, start step, tokens seen)."""
    import mlx.optimizers as optim
    from mlx_lm.tuner.trainer import grad_checkpoint

    optimizer = optim.Adam(learning_rate=job.args.learning_rate)
    start, tokens = 0, 0
    if job.resume_from_checkpoint:
        state = load_checkpoint(job.resume_from_checkpoint, model, optimizer)
        start, tokens = state["step"], state.get("tokens", 0)
    if job.args.grad_checkpoint:
        grad_checkpoint(model.layers[0])
    return optimizer, start, tokens


def agreed_stop(stop, size: int) -> bool:
    """Whether any process was asked to stop (``stop()``, the local flag): a collective in a
    distributed launch, so every rank calls it at the same point and all stop together.
    A rank never stops on its own there: the others would wait for it in their next
    collective (``mx.distributed.init`` forever)."""
    if size == 1:
        return stop()
    return mx.distributed.all_sum(mx.array(int(stop())), stream=mx.cpu).item() > 0


def stop_if_asked(stop, size: int, when: str) -> None:
    """Before training, in a distributed launch: every rank ends cancelled together if any
    was asked to stop (the load went on meanwhile: see workers/mlx/__main__.py)."""
    from workers.runtime import Cancelled

    if size > 1 and agreed_stop(stop, size):
        raise Cancelled(f"stopped by a signal {when}")


HOST_BYTES = 64  # a host name's room in the gathered array (longer ones are cut)


class RankMemory:
    """Every process's MLX memory, for rank 0's ``memory`` events (backend.ranks) in a
    distributed launch. ``gather()`` is a collective: every rank calls it at the same steps
    (the report steps, which all ranks share); rank 0 hands the list to the sampler
    (MemorySampler.ranks), whose memory events carry it from then on. Host names are
    gathered once, here."""

    def __init__(self, world, sampler):
        self.world, self.sampler = world, sampler
        name = np.frombuffer(socket.gethostname().encode()[:HOST_BYTES].ljust(HOST_BYTES,
                                                                              b"\0"), np.uint8)
        names = mx.distributed.all_gather(mx.array(name)[None], stream=mx.cpu)
        self.hosts = [bytes(np.array(row)).rstrip(b"\0").decode(errors="replace")
                      for row in names]

    def gather(self) -> list[dict[str, Any]]:
        from workers.memory import process_rss_bytes

        active, cache = mx.get_active_memory(), mx.get_cache_memory()
        mine = mx.array([[active, mx.get_peak_memory(), active + cache, process_rss_bytes()]],
                        dtype=mx.int64)
        table = mx.distributed.all_gather(mine, stream=mx.cpu).tolist()
        ranks = [{"rank": r, "host": self.hosts[r], "active_bytes": a, "peak_bytes": p,
                  "driver_bytes": d, "rss_bytes": rss}
                 for r, (a, p, d, rss) in enumerate(table)]
        if self.world.rank() == 0:
            self.sampler.ranks = ranks  # the memory events carry them from now on
        return ranks


def rank_memory(world, sampler) -> RankMemory | None:
    """The gatherer of a distributed launch; None in one process (nothing to gather)."""
    return RankMemory(world, sampler) if world.size() > 1 else None


def report_and_checkpoint(job: JobConfig[MLXTrainArgs], events: EventWriter, reporter: Reporter,
                          model: nn.Module, optimizer, config: dict[str, Any], it: int,
                          cancelled: bool, rank: int, between=None,
                          memory: RankMemory | None = None) -> None:
    """After step ``it``: the interval's metrics every ``steps_per_report`` (and at the end or
    on cancel) with every rank's memory (``memory``, several processes), then ``between``
    (SFT's validation), then a checkpoint every ``steps_per_save`` and on cancel, written by
    rank 0 only."""
    args = job.args
    if it % args.steps_per_report == 0 or it == args.iters or cancelled:
        if memory is not None:
            memory.gather()
        reporter.report(it, {"learning_rate": optimizer.learning_rate.item()})
    if between is not None:
        between(it)
    if (it % args.steps_per_save == 0 or cancelled) and rank == 0:
        path = save_checkpoint(job, model, optimizer, config, it, {"tokens": reporter.tokens})
        events.emit("checkpoint", step=it, path=str(path.resolve()))
        reporter.restart_clock(it)


def finish(job: JobConfig[MLXTrainArgs], events: EventWriter, reporter: Reporter, model: nn.Module,
           config: dict[str, Any], *, start: int, it: int, runtime: float, num_layers: int,
           size: int, rank: int, cancelled: bool, **extra: Any) -> RunResult:
    """Save the adapter (rank 0), announce it, and summarise the run."""
    events.emit("status", phase="saving", message=f"saving the adapter to {job.adapter_dir}")
    if rank == 0:
        save_adapter(model, job.adapter_dir, config)
    events.emit("artifact", kind="adapter", path=str(job.adapter_dir))
    steps = it - start
    effective = job.args.batch_size * job.args.grad_accumulation_steps  # rows per step
    summary = {
        "steps": it,
        "total_steps": job.args.iters,
        "train_runtime_s": round(runtime, 3),
        "steps_per_s": round(steps / runtime, 4) if runtime > 0 else None,
        "samples_per_s": round(steps * effective / runtime, 3) if runtime > 0
        else None,
        "final_loss": reporter.last_loss,
        **extra,
        "tokens": reporter.tokens,
        "trainable_params": trainable_count(model),
        "lora_layers": num_layers,
        "device": device_name(),
        "processes": size,
        "adapter_path": str(job.adapter_dir),
    }
    return RunResult("cancelled" if cancelled else "succeeded", summary)
