"""KTO with a LoRA adapter on torch, through TRL's KTOTrainer. Reads top to bottom:

    pick device → load tokenizer and model → LoRA + KTOConfig from the knobs → trainer
    (tokenizes; precomputes reference log-probs if asked) → train → save the adapter.

Events leave through ``EventCallback`` (metrics, progress, checkpoints) and the status lines here.
With LoRA the reference model is the base model with the adapter switched off: no second copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

import datasets
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import KTOConfig, KTOTrainer

from contract.events import EventWriter
from contract.rows import Row
from workers.memory import MemorySampler, torch_probe
from workers.model_source import model_source
from workers.torch.callback import EventCallback
from workers.torch.config import JobConfig
from workers.torch.device import DeviceChoice, Platform, choose_device
from workers.torch.errors import ModelNotFound, checkpoint_disk_full


@dataclass
class RunResult:
    status: str  # "succeeded" | "cancelled"
    summary: dict[str, Any] = field(default_factory=dict)


def train(job: JobConfig, rows: list[Row], events: EventWriter, stop, sampler: MemorySampler):
    """Train one job. ``stop`` is the SIGTERM flag; before training it interrupts at once."""
    p = job.params
    choice = choose_device(Platform.detect(), p["device"], p["dtype"])
    sampler.backend_probe = torch_probe(choice.device)

    events.emit(
        "status",
        phase="loading_model",
        message=f"loading {job.model} on {choice.device} in {choice.dtype}",
    )
    tokenizer, model = load_model(job.model, choice)

    peft_config = LoraConfig(
        r=p["r"],
        lora_alpha=p["lora_alpha"],
        lora_dropout=p["lora_dropout"],
        target_modules=_target_modules(p["target_modules"]),
        task_type="CAUSAL_LM",
    )
    args = kto_config(job, choice)
    callback = EventCallback(events, stop_requested=stop)

    if p["precompute_ref_log_probs"]:
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
        args=args,
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
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, choice.dtype))
    except OSError as exc:  # missing or broken files
        raise ModelNotFound(f"the folder {source} holds no loadable model: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ValueError(
            f"{model_id} has no chat template (tokenizer.chat_template is unset); "
            "KTO rows are rendered through it"
        )
    return tokenizer, model


def kto_config(job: JobConfig, choice: DeviceChoice) -> KTOConfig:
    """Every knob of contract.knobs.TORCH_KTO, under TRL's and transformers' own names."""
    p = job.params
    return KTOConfig(
        output_dir=str(job.checkpoints_dir),
        per_device_train_batch_size=p["per_device_train_batch_size"],
        gradient_accumulation_steps=p["gradient_accumulation_steps"],
        learning_rate=p["learning_rate"],
        num_train_epochs=p["num_train_epochs"],
        max_steps=p["max_steps"],
        max_length=p["max_length"],
        beta=p["beta"],
        desirable_weight=p["desirable_weight"],
        undesirable_weight=p["undesirable_weight"],
        precompute_ref_log_probs=p["precompute_ref_log_probs"],
        **_checkpointing(p["gradient_checkpointing"]),
        # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is the ratio
        warmup_steps=min(p["warmup_ratio"], 0.9999),
        seed=p["seed"],
        logging_steps=p["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=p["save_steps"],
        save_total_limit=p["save_total_limit"],
        bf16=choice.bf16,
        fp16=choice.fp16,
        use_cpu=choice.use_cpu,
        report_to=[],
        disable_tqdm=True,
    )


def _checkpointing(on: bool) -> dict[str, Any]:
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
