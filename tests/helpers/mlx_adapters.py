"""MLX adapter folders for the tests: a tiny non-trivial LoRA adapter (B non-zero, so the
adapter changes the model) saved as the MLX jobs save theirs, and folders that are not one."""

from __future__ import annotations

import json
from pathlib import Path

# Not the KTO knobs' defaults (16 blocks, rank 8, scale 20): a run that starts from it shows
# the adapter's shape replacing them.
SHAPE = {"num_layers": 1, "rank": 4, "scale": 2.0, "dropout": 0.0}


def make_mlx_adapter(model_dir: Path, folder: Path, seed: int = 1, b_std: float = 0.05,
                     **shape) -> Path:
    """LoRA (mlx-lm's layers) on the last ``num_layers`` blocks of the model, A as mlx-lm
    draws it, B drawn from N(0, b_std²), saved with workers/mlx/common.py's save_adapter and
    an adapter_config.json like a finished job's."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from workers.mlx.common import save_adapter

    shape = {**SHAPE, **shape}
    lora = {k: shape[k] for k in ("rank", "scale", "dropout")}
    model, _ = load(str(model_dir))
    model.freeze()
    mx.random.seed(seed)
    linear_to_lora_layers(model, shape["num_layers"], lora)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * b_std
    mx.eval(model.parameters())
    config = {"model": str(model_dir), "fine_tune_type": "lora",
              "num_layers": shape["num_layers"], "lora_parameters": lora,
              "prospect": {"job_id": 0, "method": "sft", "params": {}}}
    return save_adapter(model, folder, config)


def make_peft_folder(folder: Path) -> Path:
    """What a torch (PEFT) job leaves: adapter_model.safetensors and PEFT's config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(b"not read")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return folder
