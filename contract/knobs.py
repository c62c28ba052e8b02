"""The knobs of each training method: defaults, help text and validation, in one place.

Names are the libraries' own (TRL's KTOConfig, PEFT's LoraConfig), so the seed guide and the
libraries' docs carry over. Defaults are the seed guide's KTO recipe for an M4 with 24 GB.
Plain Python: the server imports this to validate a job before anything starts and to draw the
new-job form; the worker imports it to read its config. Unknown keys are an error.
"""

from __future__ import annotations

from typing import Any

from contract.knob_core import Knob, Method, ParamError, _shown
from contract.knobs_scale import mlx_hosts_knob, torch_scale_errors, torch_scale_knobs

__all__ = ["Knob", "Method", "ParamError", "METHODS", "method_for"]


def _convert_errors(p: dict[str, Any]) -> list[ParamError]:
    errs = []
    if p["q_bits"] not in CONVERT_BITS:
        errs.append(ParamError("q_bits", f"must be 4 or 8 (or 0: no quantization), got "
                               f"{_shown(p['q_bits'])}"))
    if p["q_group_size"] not in CONVERT_GROUP_SIZES:
        errs.append(ParamError("q_group_size", f"must be 32, 64 or 128, got "
                               f"{_shown(p['q_group_size'])}"))
    return errs


def _start_and_eval_knobs(interval: str) -> list[Knob]:
    """Where a KTO run starts (a fresh LoRA or an adapter) and its held-out split; the
    evaluation interval under the library's own name (TRL eval_steps, mlx-lm steps_per_eval)."""
    return [
        Knob("init_adapter", str, "", "Start from this adapter instead of a fresh LoRA: a job "
             "id (e.g. 12) or an adapter folder, trained on this same base model. Its LoRA "
             "shape is kept, and the reference model is the base with this adapter, frozen: "
             "KTO's rewards and KL are measured from where the run starts. Empty: a fresh "
             "LoRA, the bare base as the reference.", group="start"),
        Knob("eval_fraction", float, 0.0, "Hold out this fraction of the rows (a seeded "
             "split, recorded in the run) and report eval_ metrics on them; 0 trains on "
             "every row.", group="evaluation", min=0.0, max=0.5),
        Knob(interval, int, 100, "Evaluate on the held-out rows every this many steps "
             "(when eval_fraction > 0).", group="evaluation", min=1, max=1_000_000),
    ]


def _kto_loss_knobs() -> list[Knob]:
    """The KTO loss's knobs, TRL's names, that both backends' KTO share."""
    return [
        Knob("beta", float, 0.1, "KTO β: how far the policy may move from the reference "
             "model.", group="kto", min=0.0, max=100),
        Knob("desirable_weight", float, 1.0, "λD, the loss weight of desirable examples. "
             "Choose λD·nD / λU·nU in [1, 4/3].", group="kto", min=0.0, max=1000),
        Knob("undesirable_weight", float, 1.0, "λU, the loss weight of undesirable examples.",
             group="kto", min=0.0, max=1000),
    ]


def _tune_knob() -> Knob:
    """auto: keep what changes the result and choose the speed knobs (contract/tune.py)."""
    return Knob("tune", str, "off", "auto: keep the effective batch, learning rate, steps and "
                "LoRA shape, and choose the fastest per-device batch, accumulation, "
                "checkpointing and kernels that fit, by timing a few steps first. off: use "
                "every knob as given (what an API request without tune gets).",
                group="hardware", choices=("auto", "off"))


def _mlx_accumulation_knob() -> Knob:
    return Knob("grad_accumulation_steps", int, 1, "Steps whose gradients add up before one "
                "optimizer update (mlx-lm's name); effective batch = batch_size × this.",
                min=1, max=4096)


TORCH_KTO = Method(
    backend="torch",
    method="kto",
    checks=torch_scale_errors,
    knobs=[
        Knob("per_device_train_batch_size", int, 2, "Examples per step on the device. KTO "
             "needs at least 2 (its KL term pairs examples within a batch).", min=1, max=4096),
        Knob("gradient_accumulation_steps", int, 8, "Steps whose gradients add up before one "
             "optimizer update; effective batch = batch size × this.", min=1, max=4096),
        Knob("learning_rate", float, 5e-7, "Peak learning rate. KTO wants small values "
             "(5e-7 to 5e-6 with LoRA).", min=0.0, max=1.0),
        Knob("num_train_epochs", float, 1.0, "Passes over the dataset (ignored when max_steps "
             "> 0).", min=0.0, max=1000),
        Knob("max_steps", int, -1, "Stop after this many optimizer steps; -1 trains for "
             "num_train_epochs.", min=-1, max=10_000_000),
        Knob("max_length", int, 512, "Longest prompt + completion in tokens; longer rows are "
             "truncated. Shorter saves memory.", min=8, max=131072),
        *_kto_loss_knobs(),
        Knob("precompute_ref_log_probs", bool, False, "Compute the reference log-probs once "
             "before training: faster steps, a pass over the data first.", group="kto"),
        Knob("use_liger_kernel", bool, False, "Liger's fused Triton kernels (CUDA only, "
             "needs the liger-kernel package; not with precompute_ref_log_probs): less "
             "memory, faster steps.", group="hardware"),
        Knob("gradient_checkpointing", bool, True, "Recompute activations in the backward "
             "pass: much less memory, about 30% slower.", group="memory"),
        Knob("r", int, 8, "LoRA rank: the adapter's capacity.", group="lora", min=1, max=1024),
        Knob("lora_alpha", int, 16, "LoRA scaling numerator (scale = alpha / r).",
             group="lora", min=1, max=4096),
        Knob("lora_dropout", float, 0.05, "Dropout on the LoRA path.", group="lora",
             min=0.0, max=0.9),
        Knob("target_modules", list, ["all-linear"], "Modules that get an adapter, comma "
             "separated; all-linear means every linear layer but the output head.",
             group="lora"),
        Knob("logging_steps", int, 10, "Log loss and rewards every this many steps.",
             group="logging", min=1, max=1_000_000),
        Knob("save_steps", int, 100, "Save a checkpoint every this many steps.",
             group="logging", min=1, max=1_000_000),
        Knob("save_total_limit", int, 3, "Keep at most this many checkpoints.",
             group="logging", min=1, max=1000),
        Knob("warmup_ratio", float, 0.1, "Fraction of steps for linear warm-up.", min=0.0,
             max=1.0),
        Knob("seed", int, 42, "Random seed for data order and adapter init.", min=0,
             max=2**32 - 1),
        Knob("device", str, "auto", "Where to train: auto picks CUDA, then MPS, then CPU.",
             group="hardware", choices=("auto", "cuda", "mps", "cpu")),
        Knob("dtype", str, "auto", "Weights and compute precision: auto is bf16 on CUDA "
             "where supported, fp32 on MPS and CPU.", group="hardware",
             choices=("auto", "float32", "bfloat16", "float16")),
        _tune_knob(),
        *torch_scale_knobs(),
        *_start_and_eval_knobs("eval_steps"),
    ],
)

def _mlx_lora_knobs() -> list[Knob]:
    """The LoRA knobs both MLX methods share, under mlx-lm's own config names."""
    return [
        Knob("num_layers", int, 16, "Transformer blocks, counted from the last, that get LoRA "
             "adapters (mlx-lm's --num-layers; the seed guide's --lora-layers). A model with "
             "fewer blocks gets them all.", group="lora", min=1, max=1024),
        Knob("rank", int, 8, "LoRA rank: the adapter's capacity.", group="lora", min=1,
             max=1024),
        Knob("scale", float, 20.0, "LoRA scale: the adapter's output is multiplied by this "
             "(mlx-lm's name; PEFT's lora_alpha / r).", group="lora", min=0.0, max=1e4),
        Knob("dropout", float, 0.0, "Dropout on the LoRA path.", group="lora", min=0.0,
             max=0.9),
    ]


MLX_SFT = Method(
    backend="mlx",
    method="sft",
    knobs=[
        Knob("iters", int, 1000, "Training iterations (optimizer steps).", min=1,
             max=10_000_000),
        Knob("batch_size", int, 4, "Examples per step.", min=1, max=4096),
        _mlx_accumulation_knob(),
        Knob("learning_rate", float, 1e-5, "Adam learning rate.", min=0.0, max=1.0),
        Knob("max_seq_length", int, 2048, "Longest example in tokens; longer ones are "
             "truncated. The seed guide uses 512 to 2048: shorter saves memory.", min=8,
             max=131072),
        Knob("grad_checkpoint", bool, False, "Recompute activations in the backward pass: "
             "less memory, slower.", group="memory"),
        Knob("compile", bool, True, "Compile the training step with mx.compile, as mlx-lm "
             "does: fused kernels, faster steps. On a CPU the first run builds its kernels "
             "with the system C++ compiler (some 15-30 s, once: cached under <tmp>/mlx).",
             group="hardware"),
        _tune_knob(),
        mlx_hosts_knob(),
        Knob("mask_prompt", bool, False, "Train on the completion only: the prompt's tokens "
             "add nothing to the loss (prompt/completion and chat data).", group="data"),
        Knob("fine_tune_type", str, "lora", "lora, or dora (weight-decomposed LoRA).",
             group="lora", choices=("lora", "dora")),
        *_mlx_lora_knobs(),
        Knob("steps_per_report", int, 10, "Report the training loss every this many steps.",
             group="logging", min=1, max=1_000_000),
        Knob("steps_per_eval", int, 100, "Compute the validation loss every this many "
             "steps.", group="logging", min=1, max=1_000_000),
        Knob("val_batches", int, 25, "Validation batches per evaluation; -1 uses the whole "
             "validation split.", group="logging", min=-1, max=1_000_000),
        Knob("steps_per_save", int, 100, "Save a checkpoint (adapter, optimizer state, step) "
             "every this many steps.", group="logging", min=1, max=1_000_000),
        Knob("seed", int, 0, "Random seed for the train/valid split, data order and adapter "
             "init.", min=0, max=2**32 - 1),
    ],
)

MLX_KTO = Method(
    backend="mlx",
    method="kto",
    knobs=[
        Knob("iters", int, 1000, "Training iterations (optimizer steps).", min=1,
             max=10_000_000),
        Knob("batch_size", int, 4, "Examples per step. KTO needs at least 2 (its KL term "
             "pairs each prompt with another example's completion in the batch).", min=2,
             max=4096),
        _mlx_accumulation_knob(),
        Knob("learning_rate", float, 5e-7, "Peak learning rate. KTO wants small values "
             "(5e-7 to 5e-6 with LoRA).", min=0.0, max=1.0),
        Knob("max_seq_length", int, 512, "Longest prompt + completion in tokens; longer rows "
             "are truncated (rows whose prompt alone fills it are dropped, as TRL does).",
             min=8, max=131072),
        *_kto_loss_knobs(),
        Knob("grad_checkpoint", bool, False, "Recompute activations in the backward pass: "
             "less memory, slower.", group="memory"),
        Knob("compile", bool, True, "Compile the training step with mx.compile, as SFT's: "
             "fused kernels, faster steps. On a CPU the first run builds its kernels with the "
             "system C++ compiler (some 15-30 s, once: cached under <tmp>/mlx).",
             group="hardware"),
        _tune_knob(),
        mlx_hosts_knob(),
        *_mlx_lora_knobs(),
        Knob("steps_per_report", int, 10, "Report loss and rewards every this many steps.",
             group="logging", min=1, max=1_000_000),
        Knob("steps_per_save", int, 100, "Save a checkpoint (adapter, optimizer state, step) "
             "every this many steps.", group="logging", min=1, max=1_000_000),
        Knob("seed", int, 0, "Random seed for data order and adapter init.", min=0,
             max=2**32 - 1),
        *_start_and_eval_knobs("steps_per_eval"),
    ],
)

def _fuse_knobs() -> list[Knob]:
    """Fusing an adapter into its base model: POST /api/adapters/{id}/fuse fills these."""
    return [
        Knob("adapter_path", str, "", "The adapter folder to fuse into the model.",
             group="fuse"),
        Knob("name", str, "", "The id the fused model is registered under; empty: "
             "<model>-<run name> (e.g. tiny-demo-baseline).", group="fuse"),
    ]


MLX_FUSE = Method(backend="mlx", method="fuse", knobs=_fuse_knobs())
TORCH_FUSE = Method(backend="torch", method="fuse", knobs=_fuse_knobs())

def _generate_knobs() -> list[Knob]:
    """An arena's generation job: two variants answer the same prompts (the job's dataset, a
    JSONL of {"messages": [...]}); variant A is the job's model with adapter_a."""
    return [
        Knob("adapter_a", str, "", "Variant A's adapter folder; empty: the bare model.",
             group="variants"),
        Knob("model_b", str, "", "Variant B's model; empty: the same model as A.",
             group="variants"),
        Knob("adapter_b", str, "", "Variant B's adapter folder; empty: the bare model.",
             group="variants"),
        Knob("max_tokens", int, 256, "Longest answer in tokens.", group="sampling", min=1,
             max=32768),
        Knob("temperature", float, 0.7, "Sampling temperature; 0 is greedy.",
             group="sampling", min=0.0, max=2.0),
        Knob("top_p", float, 1.0, "Nucleus sampling: keep the smallest set of tokens whose "
             "probability adds up to this (above 0).", group="sampling", min=0.001, max=1.0),
        Knob("seed", int, 0, "Random seed for sampling.", min=0, max=2**32 - 1),
    ]


TORCH_GENERATE = Method(backend="torch", method="generate", knobs=_generate_knobs())
MLX_GENERATE = Method(backend="mlx", method="generate", knobs=_generate_knobs())

# mlx_lm.convert's own names; the server checks the choices (Method._cross_check) and fills
# name; the folder is <PROSPECT_HOME>/models/<name> (workers/mlx/convert.py output_dir).
CONVERT_BITS = (0, 4, 8)
CONVERT_GROUP_SIZES = (32, 64, 128)
MLX_CONVERT = Method(backend="mlx", method="convert", checks=_convert_errors, knobs=[
    Knob("q_bits", int, 4, "Bits per quantized weight: 4 or 8; 0 converts without "
         "quantizing (dtype then says the precision).", group="convert"),
    Knob("q_group_size", int, 64, "Weights that share one scale and bias: 32, 64 or 128 "
         "(smaller: more accurate, a little larger).", group="convert"),
    Knob("dtype", str, "auto", "Precision of what is not quantized: auto keeps the model's "
         "own (its config's torch_dtype).", group="convert",
         choices=("auto", "float16", "bfloat16", "float32")),
    Knob("name", str, "", "The id the converted model is registered under (its folder "
         "under <home>/models).", group="convert"),
])

# A hub model downloaded into the Hugging Face cache (workers/hub); POST /api/models/download
# fills these after its pre-check (app/hub/download.py). The job's model is the hub id.
HUB_DOWNLOAD = Method(backend="hub", method="download", knobs=[
    Knob("revision", str, "main", "A branch, tag or commit of the repo.", group="download"),
    Knob("allow_patterns", list, [], "The files to fetch (names or globs); empty: what a "
         "model needs (contract/hub_files.py).", group="download"),
    Knob("timeout_s", int, 10, "Seconds without a byte from the hub before a file's "
         "download fails (HF_HUB_DOWNLOAD_TIMEOUT).", group="download", min=1, max=600),
])

METHODS: dict[tuple[str, str], Method] = {
    (m.backend, m.method): m for m in (TORCH_KTO, MLX_SFT, MLX_KTO, MLX_FUSE, TORCH_FUSE,
                                       TORCH_GENERATE, MLX_GENERATE, MLX_CONVERT,
                                       HUB_DOWNLOAD)
}


def method_for(backend: str, method: str) -> Method:
    try:
        return METHODS[(backend, method)]
    except KeyError:
        pairs = ", ".join(f"{b}/{m}" for b, m in METHODS)
        raise ParamError("method", f"{backend}/{method} is not available; choose {pairs}") from None
