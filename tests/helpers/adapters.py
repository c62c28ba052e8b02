"""Tiny torch LoRA adapters for the tests: built offline on a local model with PEFT and saved
with save_pretrained, as a finished torch job leaves its adapter."""

from __future__ import annotations

import json
from pathlib import Path

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_lora_adapter(model_dir: Path, out: Path, *, r: int = 4, lora_alpha: int = 8,
                       target_modules: list[str] | None = None, scale: float = 0.05,
                       seed: int = 0) -> Path:
    """A LoRA adapter on ``model_dir`` whose A and B are small random values (not PEFT's
    B = 0, which leaves the model unchanged), lora_dropout 0, saved to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                        target_modules=target_modules or LLAMA_LINEAR,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * scale)
    model.save_pretrained(out)
    return out


def torch_adapter_files(folder: Path, base: str) -> Path:
    """A folder shaped like a PEFT adapter of ``base`` (config and a weights file) for the
    server's checks, which read the files' names and the config, never the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": base, "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


def mlx_adapter_files(folder: Path, base: str) -> Path:
    """The same for an mlx-lm adapter (adapters.safetensors, its config naming ``model``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"model": base, "fine_tune_type": "lora", "num_layers": 2}))
    (folder / "adapters.safetensors").write_bytes(b"\0" * 16)
    return folder
