"""What goes wrong in an MLX job, in plain words: the hints whose wording differs for mlx-lm's
knobs. The failures every worker shares (bad params, config, missing model, chat template)
and the ``error`` event itself are workers/runtime.py's.
"""

from __future__ import annotations

from typing import Any

from contract.rows import DatasetError
from workers import runtime

OOM_HINT = (
    "The model ran out of memory. Lower batch_size (KTO: keep it at least 2), lower "
    "max_seq_length, lower num_layers, turn grad_checkpoint on, or pick a smaller (or a "
    "4-bit quantized MLX) model."
)


def describe_error(exc: BaseException, raw: dict | None = None) -> dict[str, Any]:
    """The fields of an ``error`` event: error_type, message, hint. ``raw`` is the config as
    read: SFT's dataset hint differs from KTO's (no config read: SFT's)."""
    method = (raw or {}).get("method", "sft")
    message = str(exc) or type(exc).__name__
    if isinstance(exc, DatasetError) and method == "sft":
        where = f"row {exc.row} of the dataset" if exc.row is not None else "the dataset file"
        return {"error_type": "dataset", "message": message, "row": exc.row,
                "hint": f"Fix {where}, then launch again. SFT rows are all one shape: text, "
                        "prompt and completion, or messages; a KTO file trains on its "
                        "desirable rows."}
    lowered = message.lower()
    if isinstance(exc, MemoryError) or "out of memory" in lowered or (
        "metal" in lowered and "memory" in lowered
    ):
        return {"error_type": "out_of_memory", "message": message, "hint": OOM_HINT}
    if isinstance(exc, ValueError) and "batch_size" in lowered and "examples" in lowered:
        return {"error_type": "dataset", "message": message,
                "hint": "The dataset (or its split) has fewer rows than batch_size: lower "
                        "batch_size or add rows."}
    return runtime.describe_error(exc)
