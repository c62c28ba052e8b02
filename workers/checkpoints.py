"""Which checkpoint a resume starts from: the one it was given if whole, else the newest
earlier one that is.

A checkpoint can be damaged after it was written (a disk error, a copy or sync cut short,
a file edited by hand); resuming from it then failed every time. Before anything heavy loads,
the worker checks the files of the checkpoint in its config, and when one is damaged falls
back to the newest intact checkpoint-N before it in the same folder, and says so in a warning
event. Plain Python (no torch, no mlx): the checks read headers and checksums only.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

# What each backend's resume reads (HF Trainer's checkpoint of a PEFT model; ours for MLX).
# "a|b": either file. Under FSDP the optimizer state is accelerate's optimizer.bin; the
# checkpoints of several processes also hold rng_state_<rank>.pth, which HF does without
# when a resume runs with another number of processes (it only warns).
TORCH_FILES = ("adapter_model.safetensors", "optimizer.pt|optimizer.bin", "trainer_state.json")
MLX_FILES = ("adapters.safetensors", "optimizer.safetensors", "state.json")
STEP = re.compile(r"^checkpoint-(\d+)$")


class NoIntactCheckpoint(ValueError):
    """Every checkpoint a resume could start from is damaged."""


def damage(folder: Path, required: tuple[str, ...]) -> str | None:
    """None when ``folder`` looks whole; else what is wrong with it, in a few words."""
    if not folder.is_dir():
        return "is gone"
    for name in required:
        names = name.split("|")
        if not any((folder / n).is_file() for n in names):
            return f"has no {' or '.join(names)}"
    for path in sorted(folder.iterdir()):
        problem = _file_damage(path) if path.is_file() else None
        if problem:
            return f"has a damaged {path.name} ({problem})"
    return None


def _file_damage(path: Path) -> str | None:
    try:
        if path.suffix == ".safetensors":
            return _safetensors_damage(path)
        if path.suffix == ".json":
            json.loads(path.read_bytes())
        elif path.suffix in (".pt", ".pth", ".bin"):
            # torch.save writes a zip archive with a CRC-32 per member: testzip reads them all.
            if not zipfile.is_zipfile(path):
                return "not a whole torch archive"
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{bad} fails its checksum"
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


def _safetensors_damage(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors'
    bytes: the header must parse and the tensors must end exactly where the file ends."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than its header"
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 2**20):
            return "its header runs past the end of the file"
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if max(ends, default=0) != size - 8 - n:
        return f"{size - 8 - n} bytes of tensor data where the header says {max(ends, default=0)}"
    return None


def _step(path: Path) -> int | None:
    m = STEP.match(path.name)
    return int(m.group(1)) if m else None


def pick(requested: Path, required: tuple[str, ...]) -> tuple[Path, list[str]]:
    """``requested`` if whole, else the newest whole checkpoint-N before it in its folder;
    with one note per checkpoint passed over. NoIntactCheckpoint when none is whole."""
    top = _step(requested)
    earlier = [p for p in requested.parent.glob("checkpoint-*")
               if (s := _step(p)) is not None and top is not None and s < top]
    notes: list[str] = []
    for candidate in [requested, *sorted(earlier, key=_step, reverse=True)]:
        problem = damage(candidate, required)
        if problem is None:
            return candidate, notes
        notes.append(f"{candidate.name} {problem}")
    raise NoIntactCheckpoint(f"no intact checkpoint to resume from: {'; '.join(notes)}")


def resume_from_intact(raw: dict[str, Any], required: tuple[str, ...], emit) -> dict[str, Any]:
    """The worker's raw config with ``resume_from_checkpoint`` moved to an intact checkpoint
    (a warning event says which and why); unchanged when the given one is whole."""
    given = raw.get("resume_from_checkpoint")
    if not isinstance(given, str) or not given or raw.get("method") == "fuse":
        return raw
    picked, notes = pick(Path(given), required)
    if not notes:
        return raw
    emit("log", level="warning", message=f"cannot resume from {'; '.join(notes)}: resuming "
         f"from {picked.name} instead, the newest intact checkpoint before it")
    return {**raw, "resume_from_checkpoint": str(picked)}
