"""What goes wrong in a torch job in its own terms: running out of device memory, and the disk
filling up while HF Trainer writes a checkpoint. The failures every worker shares (and the
``error`` event itself) are workers/runtime.py's.

No torch import: errors are recognised by their class and message, so this also works for a
failure that happens before torch is loaded.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from workers import runtime
from workers.runtime import DiskFull, HintedError
from workers.world import is_communication_error

OOM_HINT = (
    "The model ran out of {where} memory. Lower per_device_train_batch_size (keep it "
    "at least 2 and raise gradient_accumulation_steps instead), lower max_length, "
    "turn gradient_checkpointing on, or pick a smaller model."
)


class InitAdapterError(HintedError):
    """``init_adapter`` names a folder that is not a PEFT adapter, or one whose shapes do not
    fit the job's model."""

    error_type = "init_adapter"

    def __init__(self, folder: Path, problem: str, fits: bool = True):
        fix = ("Pick an adapter trained on this same base model (a finished job's adapter "
               "folder or its job id), or leave init_adapter empty for a fresh LoRA."
               if not fits else
               "Pick a finished job's adapter folder (it holds adapter_config.json and "
               "adapter_model.safetensors) or its job id, or leave init_adapter empty for a "
               "fresh LoRA.")
        super().__init__(f"init_adapter {folder} {problem}.", fix)
        self.folder = folder


def memory_hint(exc: BaseException, lowered: str) -> str | None:
    """The hint when ``exc`` is torch (CUDA, MPS) or the system running out of memory."""
    if "out of memory" in lowered or type(exc).__name__ == "OutOfMemoryError":
        where = "Apple GPU (MPS)" if "mps" in lowered else ("GPU" if "cuda" in lowered else "")
        return OOM_HINT.format(where=where or "device")
    if isinstance(exc, MemoryError):
        return OOM_HINT.format(where="system")
    return None


DISTRIBUTED_HINT = (
    "The processes of this run lost each other: another one failed or was stopped first "
    "(worker.log has each rank's traceback, and torchrun's \"Root Cause\" section names the "
    "first). Fix that one's error and resume the job. If none failed, check that no other "
    "program uses these GPUs (nvidia-smi), and run with NCCL_DEBUG=INFO in the server's "
    "environment for NCCL's own account."
)
FSDP_HINT = (
    "FSDP shards the model across GPUs and this machine has none that PyTorch sees: set "
    "distributed to ddp (or auto), which trains the processes on the CPU, or run on a CUDA "
    "machine."
)
PORT_HINT = (
    "Another program holds the port the processes of this run meet on: launch the job "
    "again (each launch picks a free port), or stop the program that holds it."
)


def describe_error(exc: BaseException, raw: dict | None = None) -> dict[str, Any]:
    """The fields of a torch job's ``error`` event: error_type, message, hint. A failure of
    the processes' communication (gloo, NCCL, the rendezvous) names the way to the rank that
    failed first; running out of memory is still out of memory, whatever reported it."""
    message = str(exc) or type(exc).__name__
    lowered = message.lower()
    if memory_hint(exc, lowered) is None:
        if "address already in use" in lowered or getattr(exc, "errno", None) == errno.EADDRINUSE:
            return {"error_type": "port_in_use", "message": message, "hint": PORT_HINT}
        if "no available devices found" in lowered:  # accelerate's FSDP without a GPU
            return {"error_type": "device", "message": message, "hint": FSDP_HINT}
        if is_communication_error(exc):
            return {"error_type": "distributed", "message": message, "hint": DISTRIBUTED_HINT}
    return runtime.describe_error(exc, memory_hint)


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
