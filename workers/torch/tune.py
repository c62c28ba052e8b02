"""The torch side of auto-tuning (workers/tune.py drives it): ``TorchProbe(settings, steps)``
times ``steps`` KTO steps of a throwaway KTOTrainer in those speed settings, on a few of the
job's rows, and puts the model back as it found it.

Probe steps are not training steps: nothing of them is kept (the adapter's weights are put
back, the optimizer is thrown away, nothing is saved or logged to the events), and the real
trainer starts afterwards with the same seed, so a tuned run trains exactly as an untuned run
with the chosen values would.

With a fresh LoRA the model is the bare base model and each probe's trainer wraps it in the
job's LoRA (TRL does, as in the run); afterwards the LoRA layers are unloaded. With
``init_adapter`` the model is already a PeftModel: TRL adds the frozen "ref" copy, which is
deleted afterwards, and the starting adapter's weights are loaded back.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import importlib.util
import math
import tempfile
import time
from typing import Any

import datasets
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import TrainerCallback
from trl import KTOTrainer

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import TorchKTOArgs
from contract.rows import Row
from contract.tune import SPEED_KNOBS, TunePlan, TuneResult, read_plan, read_result
from workers.memory import process_rss_bytes, torch_probe
from workers.runtime import HintedError
from workers.torch.device import DeviceChoice
from workers.tune import SkipSetting, _planned, autotune
from workers.world import ONE_PROCESS, World

DISTRIBUTED_NOTE = "not timed under a distributed launch: the plan's choice per GPU"


def tune(job: JobConfig[TorchKTOArgs], choice: DeviceChoice, model, tokenizer, peft_config,
         rows: list[Row], events: EventWriter, stop, config_for, world: World = ONE_PROCESS
         ) -> tuple[JobConfig[TorchKTOArgs], bool]:
    """(the job with the chosen speed knobs, whether the model must be loaded again). Runs
    the probe when the job asks for ``tune: auto`` and the server left a plan; a saved
    choice (tune.json: a resume, a restart) is reused. A resume without a saved choice is
    not tuned (its checkpoint was made with the knobs as given), nor is a run without a plan;
    nothing measured: the job as given. Under a distributed launch nothing is timed (each
    rank would time its own probe, at its own speed, and the ranks could choose apart):
    every rank takes the plan's first setting, which the planner sized per GPU."""
    if job.args.tune != "auto":
        return job, False
    saved, plan = _saved(job, world), read_plan(job.run_dir)
    if saved is None and (plan is None or job.resume_from_checkpoint):
        return job, False
    if world.distributed:
        if saved is None and not (plan and plan.candidates):
            return job, False
        result = saved or _planned(plan, events, job.run_dir, note=DISTRIBUTED_NOTE,
                                   record=world.rank == 0)
        return _with(job, result.chosen, events), False
    probe = TorchProbe(job, choice, model, tokenizer, peft_config, rows, config_for)
    result = autotune(plan or TunePlan([], {}, 0), probe, events, stop, is_oom, job.run_dir)
    probe.cleanup()
    if result is None:
        events.emit("log", level="warning", message="auto-tuning measured no setting; "
                    "training with the knobs as given")
        return job, probe.patched
    return _with(job, result.chosen, events), probe.patched


def _saved(job: JobConfig[TorchKTOArgs], world: World) -> TuneResult | None:
    """The saved choice. Under several processes rank 0 may be writing tune.json (the plan's
    first setting) while another rank reads it: a half-written file there is no choice yet,
    and that rank takes the plan's first setting too, the same one."""
    try:
        return read_result(job.run_dir)
    except (ValueError, TypeError, KeyError):
        if not world.distributed:
            raise
        return None


def _with(job: JobConfig[TorchKTOArgs], chosen: dict[str, Any],
          events: EventWriter) -> JobConfig[TorchKTOArgs]:
    """The job with the chosen speed knobs, unless they would change the effective batch."""
    chosen = {k: v for k, v in chosen.items() if k in SPEED_KNOBS[("torch", "kto")]}
    args = dataclasses.replace(job.args, **chosen)
    if _effective(args) != _effective(job.args):  # never: auto keeps the effective batch
        events.emit("log", level="warning", message=f"ignored the tuned settings {chosen}: "
                    "they change the effective batch")
        return job
    return dataclasses.replace(job, args=args)


def _effective(args: TorchKTOArgs) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps


class LigerUnavailable(HintedError):
    error_type = "liger_kernel"


def liger_problem(device: str) -> str | None:
    """Why Liger's kernels cannot run here, or None when they can."""
    if device != "cuda":
        return f"Liger's kernels run on CUDA only (this job runs on {device})"
    if importlib.util.find_spec("liger_kernel") is None:
        return "the liger-kernel package is not installed"
    return None


def check_liger(args: TorchKTOArgs, device: str) -> None:
    """A job that asks for Liger where it cannot run is refused with the fix."""
    if not args.use_liger_kernel:
        return
    problem = liger_problem(device)
    if problem:
        raise LigerUnavailable(f"use_liger_kernel is on, but {problem}.",
                               "Turn use_liger_kernel off, or on a CUDA machine install "
                               "liger-kernel (pip install liger-kernel).")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or the system) running out of memory."""
    types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                              getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    if isinstance(exc, types + (MemoryError,)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _Timer(TrainerCallback):
    """Times the micro-batches after the first (the warm-up: allocations, kernels) to the end
    of the last optimizer step, so the rate includes the optimizer's share; samples memory
    at each step end."""

    def __init__(self, sync, memory):
        self.sync, self.memory = sync, memory
        self.micro = 0  # micro-batches done
        self.started: float | None = None
        self.seconds = 0.0
        self.peak = 0

    def _micro_done(self) -> None:
        self.micro += 1
        if self.micro == 1:
            self.sync()
            self.started = time.perf_counter()

    def on_substep_end(self, args, state, control, **kwargs):
        self._micro_done()

    def on_step_end(self, args, state, control, **kwargs):
        self._micro_done()
        self.peak = max(self.peak, self.memory())
        if state.global_step >= state.max_steps and self.started is not None:
            self.sync()
            self.seconds = time.perf_counter() - self.started

    def timed(self) -> tuple[int, float]:
        """(micro-batches timed, their seconds)."""
        if self.micro < 2 or self.seconds <= 0:
            raise RuntimeError("the probe's steps were not timed")
        return self.micro - 1, self.seconds


class _TimedKTO(KTOTrainer):
    """KTOTrainer that also times its reference precompute (run inside __init__)."""

    precompute_s = 0.0

    def _precompute_ref_logps(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super()._precompute_ref_logps(*args, **kwargs)
        finally:
            _sync(self.args.device.type)
            type(self).precompute_s += time.perf_counter() - t0


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


class TorchProbe:
    """``probe(settings, steps) -> (samples_per_s, peak_bytes)`` over the loaded model.
    ``patched`` turns true once a probe changed the model in a way that cannot be put back
    (Liger swaps module kernels): the caller then loads the model again."""

    WARMUP = 1  # untimed micro-batches first: allocations, kernels, caches

    def __init__(self, job: JobConfig[TorchKTOArgs], choice: DeviceChoice, model, tokenizer,
                 peft_config, rows: list[Row], config_for):
        self.job, self.choice = job, choice
        self.model, self.tokenizer, self.peft_config = model, tokenizer, peft_config
        self.rows = rows
        self.config_for = config_for  # (args, **overrides) -> KTOConfig: kto.kto_config's
        self.patched = False
        self._memory_probe = torch_probe(choice.device)

    # --- memory --------------------------------------------------------------------------
    def _memory(self) -> int:
        if self.choice.device == "cuda":
            return torch.cuda.max_memory_allocated()
        if self._memory_probe is not None:  # MPS: what the driver holds
            return int(self._memory_probe().get("driver_bytes") or 0)
        return process_rss_bytes()

    def cleanup(self) -> None:
        gc.collect()
        if self.choice.device == "cuda":
            torch.cuda.empty_cache()
        elif self.choice.device == "mps":
            torch.mps.empty_cache()

    # --- one probe -------------------------------------------------------------------------
    def __call__(self, settings: dict[str, Any], steps: int) -> tuple[float, int]:
        args = dataclasses.replace(self.job.args, **settings)
        if "dtype" in settings and settings["dtype"] not in ("auto", self.choice.dtype):
            raise SkipSetting(f"dtype {settings['dtype']} needs the model loaded again")
        if args.use_liger_kernel:
            problem = liger_problem(self.choice.device)
            if problem:
                raise SkipSetting(problem)
        self.cleanup()  # what the last probe (or its out-of-memory traceback) held
        if self.choice.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # One warm-up micro-batch, then at least ``steps`` timed ones, in whole optimizer
        # steps: a setting with accumulation 8 is timed over one step of 8 micro-batches.
        per, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
        total = math.ceil((self.WARMUP + steps) / accum)
        subset = [self.rows[i % len(self.rows)] for i in range(per * accum * total)]
        saved = self._save_adapter()
        base = self.model if self.peft_config is not None else self.model.get_base_model()
        self._forward = base.__dict__.get("forward")
        trainer = None
        try:
            with tempfile.TemporaryDirectory(prefix="prospect-tune-") as tmp:
                config = self.config_for(args, output_dir=tmp, max_steps=total,
                                         save_strategy="no", logging_strategy="no",
                                         logging_first_step=False)
                timer = _Timer(lambda: _sync(self.choice.device), self._memory)
                _TimedKTO.precompute_s = 0.0
                datasets.disable_progress_bars()
                trainer = _TimedKTO(model=self.model, args=config,
                                    train_dataset=datasets.Dataset.from_list(subset),
                                    processing_class=self.tokenizer,
                                    peft_config=copy.deepcopy(self.peft_config),
                                    callbacks=[timer])
                if args.use_liger_kernel:
                    self.patched = True  # applied in train(): module kernels swapped
                trainer.train()
                precompute_s = _TimedKTO.precompute_s
            micro, seconds = timer.timed()
            samples_per_s = per * micro / seconds
            peak = max(timer.peak, self._memory())
        finally:
            self._restore(saved)
            del trainer
            self.cleanup()
        if args.precompute_ref_log_probs and precompute_s > 0:
            samples_per_s = self._with_precompute(samples_per_s, precompute_s / len(subset))
        return samples_per_s, peak

    def _with_precompute(self, samples_per_s: float, per_row_s: float) -> float:
        """Samples/s over the whole run when the reference is computed once for every row:
        the run's samples at the timed rate, plus the precompute of all its rows."""
        args = self.job.args
        n = len(self.rows)
        if args.max_steps and args.max_steps > 0:
            samples = args.max_steps * args.per_device_train_batch_size * \
                args.gradient_accumulation_steps
        else:
            samples = n * max(float(args.num_train_epochs), 1e-9)
        samples = max(samples, 1)
        seconds = samples / samples_per_s + n * per_row_s
        return samples / seconds if seconds > 0 and math.isfinite(seconds) else samples_per_s

    # --- leave the model as it was ------------------------------------------------------------
    def _save_adapter(self) -> dict[str, torch.Tensor] | None:
        if self.peft_config is not None:  # a fresh LoRA: the probe's is unloaded after
            return None
        return {name: p.detach().clone() for name, p in self.model.named_parameters()
                if ".default." in name}

    def _restore(self, saved) -> None:
        if self.peft_config is not None:
            # The LoRA layers out, the base layers back in place (also when the trainer
            # failed half-built, after TRL had wrapped the model: so not through PeftModel).
            base = self.model
            for name, module in list(base.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    parent, _, child = name.rpartition(".")
                    setattr(base.get_submodule(parent), child, module.get_base_layer())
            base.__dict__.pop("peft_config", None)
        else:
            peft = self.model
            if "ref" in getattr(peft, "peft_config", {}):
                peft.delete_adapter("ref")
            peft.set_adapter("default")
            with torch.no_grad():
                params = dict(peft.named_parameters())
                for name, value in (saved or {}).items():
                    params[name].copy_(value)
            base = peft.get_base_model()
        # TRL's fused LM head is an instance attribute over the class's forward
        if self._forward is None:
            base.__dict__.pop("forward", None)
        else:
            base.forward = self._forward
        # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*
        prefix = "activation" if hasattr(base, "activation_checkpointing_disable") else "gradient"
        if getattr(base, f"is_{prefix}_checkpointing", False):
            getattr(base, f"{prefix}_checkpointing_disable")()
        if getattr(base, "_require_grads_hook", None) is not None:
            base.disable_input_require_grads()
        for p in base.parameters():
            p.grad = None
