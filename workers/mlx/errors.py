"""What went wrong in an MLX job, in plain words: an ``error`` event with a hint.

The torch worker's ``describe_error`` knows the shared failures (bad params, config, missing
model, chat template); this adds the hints whose wording differs for mlx-lm's knobs.
"""

from __future__ import annotations

from typing import Any

from contract.rows import DatasetError
from workers.torch.errors import Cancelled, ModelNotFound
from workers.torch.errors import describe_error as _shared

OOM_HINT = (
    "The model ran out of memory. Lower batch_size (KTO: keep it at least 2), lower "
    "max_seq_length, lower num_layers, turn grad_checkpoint on, or pick a smaller (or a "
    "4-bit quantized MLX) model."
)


def describe_error(exc: BaseException, method: str = "sft") -> dict[str, Any]:
    """The fields of an ``error`` event: error_type, message, hint."""
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
    return _shared(exc)


__all__ = ["Cancelled", "ModelNotFound", "describe_error"]
