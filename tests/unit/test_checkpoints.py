"""A damaged latest checkpoint: the resume falls back to the one before and says so.

Real checkpoint files (torch.save archives, safetensors) damaged the ways a disk or a
cut-short copy damages them; the workers resuming from such a run:
tests/integration/test_checkpoint_fallback.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.workers import truncate
from workers.checkpoints import TORCH_FILES, NoIntactCheckpoint, damage, pick


def torch_checkpoint(folder: Path, step: int) -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.ones(64, 8) * step}, str(ckpt / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64, 8)}}}, ckpt / "optimizer.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def flip_byte_inside(path: Path) -> None:
    """One bit flipped in the middle of the file: a disk error, not a truncation."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_whole_checkpoint_is_taken_as_is(tmp_path):
    two, four = torch_checkpoint(tmp_path, 2), torch_checkpoint(tmp_path, 4)
    assert damage(two, TORCH_FILES) is None and pick(four, TORCH_FILES) == (four, [])


def test_a_checkpoint_of_several_processes_is_whole(tmp_path):
    # Under FSDP accelerate writes the optimizer as optimizer.bin; every rank its RNG state.
    import torch

    ckpt = torch_checkpoint(tmp_path, 2)
    (ckpt / "optimizer.pt").rename(ckpt / "optimizer.bin")
    for rank in (0, 1):
        torch.save({"python": rank}, ckpt / f"rng_state_{rank}.pth")
    assert damage(ckpt, TORCH_FILES) is None
    (ckpt / "optimizer.bin").unlink()
    assert damage(ckpt, TORCH_FILES) == "has no optimizer.pt or optimizer.bin"


@pytest.mark.parametrize("harm, expected", [
    (lambda c: truncate(c / "adapter_model.safetensors"), "adapter_model.safetensors"),
    (lambda c: flip_byte_inside(c / "optimizer.pt"), "optimizer.pt"),
    (lambda c: truncate(c / "optimizer.pt", 0.9), "optimizer.pt"),
    (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json"),
    (lambda c: (c / "optimizer.pt").unlink(), "has no optimizer.pt"),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, harm, expected):
    torch_checkpoint(tmp_path, 2)
    four, six = torch_checkpoint(tmp_path, 4), torch_checkpoint(tmp_path, 6)
    harm(six)
    picked, notes = pick(six, TORCH_FILES)
    assert picked == four and len(notes) == 1
    assert notes[0].startswith("checkpoint-6 ") and expected in notes[0], notes


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    two, four = torch_checkpoint(tmp_path, 2), torch_checkpoint(tmp_path, 4)
    truncate(two / "adapter_model.safetensors")
    shutil.rmtree(four)
    with pytest.raises(NoIntactCheckpoint, match="checkpoint-4 is gone; checkpoint-2 has a "
                                                 "damaged adapter_model.safetensors"):
        pick(four, TORCH_FILES)
    from workers.torch.errors import describe_error

    error = describe_error(NoIntactCheckpoint("x"))
    assert error["error_type"] == "checkpoint_damaged" and "clone the job" in error["hint"]


# --- the real workers -----------------------------------------------------------------------
