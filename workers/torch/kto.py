"""KTO with a LoRA adapter on torch, through TRL's KTOTrainer. Reads top to bottom:

    pick device → load tokenizer and model → LoRA + KTOConfig from the knobs → trainer
    (tokenizes; precomputes reference log-probs if asked) → train → save the adapter.

Events leave through ``EventCallback`` (metrics, progress, checkpoints) and the status lines here.
With LoRA the reference model is the base model with the adapter switched off: no second copy.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

import datasets
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import KTOConfig, KTOTrainer

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import TorchKTOArgs
from contract.rows import Row
from workers.memory import MemorySampler, torch_probe
from workers.model_source import model_source
from workers.runtime import RunResult, StopFlag, loading_model
from workers.torch.callback import EventCallback
from workers.torch.device import DeviceChoice, Platform, choose_device
from workers.torch.errors import checkpoint_disk_full


def train(job: JobConfig[TorchKTOArgs], rows: list[Row], events: EventWriter, stop: StopFlag,
          sampler: MemorySampler) -> RunResult:
    """Train one job. ``stop`` is the SIGTERM flag; before training it interrupts at once."""
    args = job.args
    choice = choose_device(Platform.detect(), args.device, args.dtype)
    sampler.backend_probe = torch_probe(choice.device)

    events.emit(
        "status",
        phase="loading_model",
        message=f"loading {job.model} on {choice.device} in {choice.dtype}",
    )
    tokenizer, model = load_model(job.model, choice)

    peft_config = LoraConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=_target_modules(args.target_modules),
        task_type="CAUSAL_LM",
    )
    config = kto_config(job, choice)
    callback = EventCallback(events, stop_requested=stop)

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
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
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

    events.emit("status", phase="saving", message=f"saving the adapter to {job.adapter_dir}")
    trainer.model.save_pretrained(job.adapter_dir)
    tokenizer.save_pretrained(job.adapter_dir)
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
    }
    return RunResult("cancelled" if callback.cancelled else "succeeded", summary)


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


def kto_config(job: JobConfig[TorchKTOArgs], choice: DeviceChoice) -> KTOConfig:
    """Every knob of contract.knobs.TORCH_KTO, under TRL's and transformers' own names."""
    args = job.args
    return KTOConfig(
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
    )


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
