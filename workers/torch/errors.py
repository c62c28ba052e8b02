"""What went wrong, in plain words: each failure becomes an ``error`` event with a hint.

No torch import: errors are recognised by their class and message, so this also works for a
failure that happens before torch is loaded.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from contract.knobs import ParamError
from contract.rows import DatasetError
from workers.checkpoints import NoIntactCheckpoint
from workers.torch.config import ConfigError
from workers.torch.device import DeviceError


class Cancelled(BaseException):  # noqa: N818 - like KeyboardInterrupt, not caught by `except Exception`
    """SIGTERM before training started: nothing worth saving yet, so stop at once."""


class ModelNotFound(OSError):  # noqa: N818
    """The model is neither a loadable local folder nor a hub id in the local cache."""


class DiskFull(OSError):  # noqa: N818
    """The disk filled up while a checkpoint was being written."""

    def __init__(self, step: int, folder: Path, previous: Path | None):
        self.step, self.folder, self.previous = step, folder, previous
        super().__init__(errno.ENOSPC, f"disk full while saving the checkpoint at step {step}; "
                         f"free space on the disk that holds {folder.parent} "
                         f"({_free(folder.parent)} free now)")


def checkpoint_disk_full(exc: OSError, step: int, checkpoints_dir: Path,
                         previous: Path | None) -> OSError:
    """Map ENOSPC during training to DiskFull when a checkpoint was being written.

    HF Trainer writes checkpoint-<step> in place and deletes old checkpoints only after a
    complete save, so the earlier checkpoints are intact. The half-written folder cannot be
    resumed from and holds the space the person must free: it is removed.
    """
    folder = Path(checkpoints_dir) / f"checkpoint-{step}"
    if exc.errno != errno.ENOSPC or not folder.is_dir():
        return exc
    if previous is None or folder.resolve() != Path(previous).resolve():
        shutil.rmtree(folder, ignore_errors=True)
    return DiskFull(step, folder, previous)


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB"
    except OSError:
        return "unknown"


OOM_HINT = (
    "The model ran out of {where} memory. Lower per_device_train_batch_size (keep it "
    "at least 2 and raise gradient_accumulation_steps instead), lower max_length, "
    "turn gradient_checkpointing on, or pick a smaller model."
)


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The fields of an ``error`` event: error_type, message, hint."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ParamError):
        return _error(
            "invalid_params",
            message,
            f"Change the parameter {exc.field}: {exc.message}",
            field=exc.field,
        )
    if isinstance(exc, ConfigError):
        return _error(
            "invalid_config",
            message,
            "The worker's config.json is wrong; this is a bug in whatever wrote it.",
            field=exc.field,
        )
    if isinstance(exc, DatasetError):
        where = f"row {exc.row} of the dataset" if exc.row is not None else "the dataset file"
        return _error(
            "dataset",
            message,
            f"Fix {where}, then launch again. Each row needs "
            "prompt, completion and label (true or false), or prompt, chosen and "
            "rejected.",
            row=exc.row,
        )
    if isinstance(exc, ModelNotFound):
        return _error(
            "model_not_found",
            message,
            "Check the model's folder path, or that the hub id is in the local Hugging "
            "Face cache: workers run offline unless the server is started with "
            "PROSPECT_ALLOW_DOWNLOADS=1 (then a hub id is downloaded once and cached).",
        )
    if isinstance(exc, DeviceError):
        return _error("device", exc.message, exc.hint)
    if isinstance(exc, NoIntactCheckpoint):
        return _error("checkpoint_damaged", message, "Every checkpoint of this run is damaged, "
                      "so it cannot be resumed: clone the job to train it again from the "
                      "start.")
    if isinstance(exc, DiskFull):
        kept = (f"The previous checkpoint ({exc.previous.name}) is intact: resume the job "
                "and it continues from there." if exc.previous else
                "No earlier checkpoint exists, so a resume starts from step 0.")
        return _error("disk_full", exc.strerror, "Free disk space (delete old runs or other "
                      f"files), or lower save_total_limit. {kept}", step=exc.step)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return _error("disk_full", message, "The disk is full: free space (delete old runs or "
                      "other files), then resume the job from its last checkpoint.")
    lowered = message.lower()
    if "out of memory" in lowered or type(exc).__name__ == "OutOfMemoryError":
        where = "Apple GPU (MPS)" if "mps" in lowered else ("GPU" if "cuda" in lowered else "")
        return _error("out_of_memory", message, OOM_HINT.format(where=where or "device"))
    if "chat template" in lowered or "chat_template" in lowered:
        return _error(
            "chat_template",
            message,
            "This model's tokenizer has no chat template. "
            "Use an instruct/chat model, or add a chat_template to its "
            "tokenizer_config.json.",
        )
    if isinstance(exc, MemoryError):
        return _error("out_of_memory", message, OOM_HINT.format(where="system"))
    return _error(
        type(exc).__name__,
        message,
        "An unexpected error: worker.log in the run folder has the full traceback.",
    )


def _error(error_type: str, message: str, hint: str, **extra: Any) -> dict[str, Any]:
    return {"error_type": error_type, "message": message, "hint": hint, **extra}
