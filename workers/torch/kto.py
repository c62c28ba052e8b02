"""KTO with a LoRA adapter on torch, through TRL's KTOTrainer. Reads top to bottom:

    pick device → hold out the eval rows (if asked) → load tokenizer and model → a fresh LoRA
    or the init adapter → KTOConfig from the knobs → trainer (tokenizes; precomputes reference
    log-probs if asked) → train (evaluating every eval_steps and at the last step) → save.

Events leave through ``EventCallback`` (metrics, eval metrics, progress, checkpoints) and the
status lines here. The reference model is never a second copy: with a fresh LoRA it is the base
with the adapter switched off; with ``init_adapter`` TRL adds a frozen copy of the starting
adapter, named "ref", and switches to it for the reference log-probs (kto_trainer.py,
compute_ref_log_probs and _compute_loss), so rewards and KL are measured from where the run
starts. Checkpoints hold both adapters (a resume gets the same reference back); the saved
adapter is the policy, "default", alone.
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import datasets
import torch
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import KTOConfig, KTOTrainer

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import TorchKTOArgs
from contract.rows import Row
from workers.memory import MemorySampler, torch_probe
from workers.model_source import model_source
from workers.runtime import HintedError, RunResult, StopFlag, loading_model, split_for_eval
from workers.torch.callback import EventCallback
from workers.torch.device import DeviceChoice, Platform, choose_device
from workers.torch.distributed import RankSync
from workers.torch.errors import InitAdapterError, checkpoint_disk_full
from workers.torch.library_overhead import cache_package_checks
from workers.torch.tune import check_liger, tune
from workers.world import ONE_PROCESS, World

LORA_KNOBS = ("r", "lora_alpha", "lora_dropout", "target_modules")


def train(job: JobConfig[TorchKTOArgs], rows: list[Row], events: EventWriter, stop: StopFlag,
          sampler: MemorySampler, world: World = ONE_PROCESS) -> RunResult:
    """Train one job. ``stop`` is the SIGTERM flag; before training it interrupts at once.
    ``world``: this process's place under ``accelerate launch`` (one process by default)."""
    cache_package_checks()  # accelerate re-reads package metadata every step otherwise
    args = job.args
    choice = choose_device(Platform.detect(), args.device, args.dtype)
    sampler.backend_probe = torch_probe(choice.device)
    rows, held = split_for_eval(job, rows, events)  # before any loading: a bad split fails fast
    if args.tune != "auto":
        check_liger(args, choice.device)  # asked for by hand where it cannot run: say so now

    events.emit(
        "status",
        phase="loading_model",
        message=f"loading {job.model} on {choice.device} in {choice.dtype}",
    )
    tokenizer, model = load_model(job.model, choice)
    model, peft_config = start_adapter(job, model, events)
    # tune: auto times a few probe steps of each candidate (not training steps: the probe
    # puts the weights back, and the trainer below starts from the same seed) and returns
    # the job with the fastest speed knobs; the effective batch and all else are kept.
    job, reload = tune(job, choice, model, tokenizer, peft_config, rows, events, stop,
                       lambda a, **over: kto_config(job, choice, args=a, **over), world)
    args = job.args
    if reload:  # a probe swapped module kernels (Liger): start from a freshly loaded model
        tokenizer, model = load_model(job.model, choice)
        model, peft_config = start_adapter(job, model, events)
    check_liger(args, choice.device)
    config = kto_config(job, choice, evaluate=bool(held))
    # Several processes stop at the step where any of them was asked to (workers/torch/
    # distributed.py); one process reads its own flag, as always.
    sync = RankSync(stop, world, sampler, job.run_dir) if world.distributed else None
    callback = EventCallback(events, stop_requested=sync if sync is not None else stop)

    if args.precompute_ref_log_probs:
        events.emit(
            "status",
            phase="precomputing_reference",
            message=f"tokenizing {len(rows)} rows and computing the reference log-probs once",
        )
    else:
        events.emit("status", phase="preparing_data", message=f"tokenizing {len(rows)} rows")
    datasets.disable_progress_bars()
    trainer = KTOTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        eval_dataset=datasets.Dataset.from_list(held) if held else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[sync, callback] if sync else [callback],
    )
    # TRL already counts the non-padding tokens of every batch for its num_tokens metric.
    callback.token_count = lambda: getattr(trainer, "_total_train_tokens", 0)

    stop.interrupt = False  # from here on SIGTERM only sets the flag; the callback acts on it
    resume = str(job.resume_from_checkpoint) if job.resume_from_checkpoint else None
    events.emit(
        "status", phase="training", message=f"resuming from {resume}" if resume else "training"
    )
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    except OSError as exc:
        mapped = checkpoint_disk_full(exc, trainer.state.global_step, job.checkpoints_dir,
                                      callback.last_checkpoint or job.resume_from_checkpoint)
        if mapped is exc:
            raise
        raise mapped from exc
    runtime = time.perf_counter() - started
    step = trainer.state.global_step
    # HF Trainer evaluates at max_steps itself; a run that ended another way (resumed from
    # its last checkpoint, say) is evaluated here. A cancelled one is not: it should stop.
    if held and not callback.cancelled and callback.last_eval_step != step:
        events.emit("status", phase="evaluating",
                    message=f"evaluating on the {len(held)} held-out rows at step {step}")
        trainer.evaluate()  # its metrics reach the events through the callback's on_log

    events.emit("status", phase="saving", message=f"saving the adapter to {job.adapter_dir}")
    save_adapter(trainer, tokenizer, job.adapter_dir)
    events.emit("artifact", kind="adapter", path=str(job.adapter_dir))

    m = output.metrics
    summary = {
        "steps": trainer.state.global_step,
        "total_steps": trainer.state.max_steps,
        "train_runtime_s": round(m.get("train_runtime", runtime), 3),
        "samples_per_s": m.get("train_samples_per_second"),
        "steps_per_s": m.get("train_steps_per_second"),
        "final_loss": callback.last_loss,
        "train_loss": m.get("train_loss"),
        "tokens": callback.token_count(),
        "device": choice.device,
        "dtype": choice.dtype,
        "adapter_path": str(job.adapter_dir),
        "processes": world.size,
    }
    if callback.last_eval_loss is not None:
        summary["eval_loss"] = callback.last_eval_loss
    return RunResult("cancelled" if callback.cancelled else "succeeded", summary)


def save_adapter(trainer: KTOTrainer, tokenizer, folder: Path) -> None:
    """The policy adapter alone (with init_adapter the model also holds the frozen "ref"
    copy) and the tokenizer, written by the world's process zero. Under FSDP the weights
    are sharded across the processes: HF Trainer's save_model gathers the full state dict
    (every process takes part) and saves the adapters from it, "ref" in its own subfolder."""
    if trainer.is_fsdp_enabled:
        trainer.save_model(str(folder))
        if trainer.is_world_process_zero():
            check_saved_weights(folder)
        return
    if not trainer.is_world_process_zero():
        return  # under DDP every process holds the same weights: one writes them
    trainer.model.save_pretrained(folder, selected_adapters=["default"])
    tokenizer.save_pretrained(folder)


def check_saved_weights(folder: Path) -> None:
    """An adapter file without tensors is a failure, not an artifact: seen once on 2 GPUs
    under FSDP, when the adapter was saved from a state dict gathered outside HF's save."""
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as saved:
        if next(iter(saved.keys()), None) is not None:
            return
    raise HintedError(f"the adapter saved in {folder} holds no weights (FSDP)",
                      "An FSDP checkpoint resumes only under FSDP: clone the job with "
                      "distributed set to ddp (the model must fit one GPU) to train it again.")


def load_model(model_id: str, choice: DeviceChoice):
    """Tokenizer and model from a local folder, or from the hub cache (offline)."""
    source = model_source(model_id)  # an absolute folder: never relative to the cwd
    with loading_model(source):  # missing or broken files: ModelNotFound
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, choice.dtype))
    if tokenizer.chat_template is None:
        raise ValueError(
            f"{model_id} has no chat template (tokenizer.chat_template is unset); "
            "KTO rows are rendered through it"
        )
    return tokenizer, model


def start_adapter(job: JobConfig[TorchKTOArgs], model,
                  events: EventWriter) -> tuple[Any, LoraConfig | None]:
    """(model, peft_config for KTOTrainer). A fresh LoRA: the bare model and the knobs' LoRA.
    ``init_adapter``: the model wrapped in that adapter, trainable, and no peft_config, so that
    TRL adds the frozen "ref" copy of it as the reference."""
    args = job.args
    if not args.init_adapter:
        return model, LoraConfig(
            r=args.r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=_target_modules(args.target_modules),
            task_type="CAUSAL_LM",
        )
    folder = Path(args.init_adapter)
    model = load_init_adapter(model, folder, job.model)
    config = model.peft_config["default"]
    shape = ", ".join(f"{name} {_shape_value(getattr(config, name, None))}" for name in LORA_KNOBS
                      if getattr(config, name, None) is not None)
    events.emit("log", level="info", message=(
        f"starting from the adapter in {folder} ({config.peft_type.value}: {shape}); its own "
        f"shape is kept, the knobs {', '.join(LORA_KNOBS)} are ignored; the reference model is "
        "this adapter, frozen"))
    return model, None


def load_init_adapter(model, folder: Path, model_id: str):
    """``folder``'s PEFT adapter on ``model``, trainable; InitAdapterError naming the folder
    and the fix when it is not an adapter or does not fit the model."""
    if not folder.is_absolute():  # the server resolves job ids and paths before this
        raise InitAdapterError(folder, "is not an absolute folder path")
    if not folder.is_dir():
        raise InitAdapterError(folder, "is not a folder")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:  # no adapter_config.json, or not a PEFT config
        raise InitAdapterError(folder, f"holds no PEFT adapter ({_first_line(exc)})") from exc
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except Exception as exc:  # shape mismatch, target modules missing, weights missing
        trained_on = config.base_model_name_or_path
        on = f", it was trained on {trained_on}" if trained_on else ""
        raise InitAdapterError(
            folder, f"does not fit {model_id}{on}: {_first_line(exc)}", fits=False) from exc


def kto_config(job: JobConfig[TorchKTOArgs], choice: DeviceChoice, evaluate: bool = False,
               args: TorchKTOArgs | None = None, **overrides: Any) -> KTOConfig:
    """Every knob of contract.knobs.TORCH_KTO, under TRL's and transformers' own names.
    ``evaluate``: there are held-out rows, evaluated every ``eval_steps``. ``args`` (the
    job's by default) and ``overrides`` (KTOConfig fields): the auto-tuner's probe."""
    args = args or job.args
    evaluation = {}
    if evaluate:
        evaluation = {
            "eval_strategy": "steps",
            "eval_steps": args.eval_steps,
            "per_device_eval_batch_size": args.per_device_train_batch_size,
        }
    config = dict(
        output_dir=str(job.checkpoints_dir),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        max_length=args.max_length,
        beta=args.beta,
        desirable_weight=args.desirable_weight,
        undesirable_weight=args.undesirable_weight,
        precompute_ref_log_probs=args.precompute_ref_log_probs,
        use_liger_kernel=args.use_liger_kernel,
        **checkpointing(args.gradient_checkpointing),
        # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is the ratio
        warmup_steps=min(args.warmup_ratio, 0.9999),
        seed=args.seed,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        bf16=choice.bf16,
        fp16=choice.fp16,
        use_cpu=choice.use_cpu,
        report_to=[],
        disable_tqdm=True,
        # DDP: a LoRA's trainable weights are all used in every forward pass, so DDP need
        # not walk the graph looking for unused ones (it warns when asked to).
        ddp_find_unused_parameters=False,
        **evaluation,
    )
    return KTOConfig(**{**config, **overrides})


def checkpointing(on: bool) -> dict[str, Any]:
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name
    # warns); non-reentrant checkpointing is the one that works with a frozen base and LoRA.
    names = {f.name for f in fields(KTOConfig)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{prefix}_checkpointing": on,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False},
    }


def _target_modules(names: list[str]) -> str | list[str]:
    # PEFT takes the shorthand "all-linear" only as a plain string, not inside a list.
    return "all-linear" if "all-linear" in names else names


def _shape_value(value: Any) -> str:
    if isinstance(value, list | set | tuple):
        return ",".join(sorted(str(v) for v in value))
    return str(value)


def _first_line(exc: BaseException) -> str:
    """The telling line of a loader's message: torch's state-dict errors start with a
    generic header, their first "size mismatch" line says what differs."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "size mismatch" in x), lines[0] if lines else "")
    line = line or type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
