"""A damaged latest checkpoint: the resume falls back to the one before and says so.

Unit tests check real checkpoint files (torch.save archives, safetensors) damaged the ways a
disk or a cut-short copy damages them; the slow ones resume the real torch and MLX workers
on the tiny demo model from a run whose latest checkpoint was truncated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from contract.events import LOG_FILE
from tests.test_torch_worker import events_of, of_type
from workers.checkpoints import MLX_FILES, TORCH_FILES, NoIntactCheckpoint, damage, pick


def torch_checkpoint(folder: Path, step: int) -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.ones(64, 8) * step}, str(ckpt / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64, 8)}}}, ckpt / "optimizer.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def flip_byte_inside(path: Path) -> None:
    """One bit flipped in the middle of the file: a disk error, not a truncation."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_whole_checkpoint_is_taken_as_is(tmp_path):
    two, four = torch_checkpoint(tmp_path, 2), torch_checkpoint(tmp_path, 4)
    assert damage(two, TORCH_FILES) is None and pick(four, TORCH_FILES) == (four, [])


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
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from workers.tools.demo_assets import build_all

    home = tmp_path_factory.mktemp("demo")
    return build_all(home / "models", home / "datasets")


def check_fell_back(run_dir: Path, rc: int, latest: int, previous: int, total: int) -> None:
    events = events_of(run_dir)
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    assert events[-1].data["status"] == "succeeded"
    warned = [w["message"] for w in of_type(events, "log") if w["level"] == "warning"
              and "cannot resume" in w["message"]]
    assert len(warned) == 1 and f"checkpoint-{latest} has a damaged" in warned[0], warned
    assert f"resuming from checkpoint-{previous} instead" in warned[0]
    training = [s["message"] for s in of_type(events, "status") if s["phase"] == "training"]
    assert f"checkpoint-{previous}" in training[-1], training
    seq_warned = next(e.seq for e in events if e.type == "log" and "cannot resume"
                      in e.data["message"])
    resumed = [e.data["step"] for e in events if e.type == "progress" and e.seq > seq_warned]
    assert resumed == list(range(previous + 1, total + 1))  # from the one before, to the end


@pytest.mark.slow
def test_the_torch_worker_resumes_from_the_checkpoint_before_a_damaged_one(tmp_path, demo):
    from contract.knobs import TORCH_KTO
    from tests.test_torch_worker import FAST, run, write_config

    write_config(tmp_path, demo)  # 6 steps, a checkpoint every 3
    rc, _ = run(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    latest = tmp_path / "checkpoints" / "checkpoint-6"
    truncate(latest / "adapter_model.safetensors")
    write_config(tmp_path, demo, params=TORCH_KTO.validate({**FAST, "max_steps": 8}),
                 resume_from_checkpoint=str(latest))
    rc, _ = run(tmp_path)
    check_fell_back(tmp_path, rc, 6, 3, 8)


@pytest.mark.slow
def test_the_mlx_worker_resumes_from_the_checkpoint_before_a_damaged_one(tmp_path, demo):
    pytest.importorskip("mlx_lm")
    from tests.test_mlx_worker import KTO_FAST, run, write_config

    write_config(tmp_path, demo, "kto", KTO_FAST)  # 8 steps, a checkpoint every 4
    rc, _ = run(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    latest = tmp_path / "checkpoints" / "checkpoint-8"
    assert damage(latest, MLX_FILES) is None
    truncate(latest / "optimizer.safetensors")
    write_config(tmp_path, demo, "kto", {**KTO_FAST, "iters": 10},
                 resume_from_checkpoint=str(latest))
    rc, _ = run(tmp_path)
    check_fell_back(tmp_path, rc, 8, 4, 10)
