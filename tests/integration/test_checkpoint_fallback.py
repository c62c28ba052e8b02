"""A damaged latest checkpoint, for real: the torch and MLX workers resume from the one
before and say so (the checkpoint checks themselves: tests/unit/test_checkpoints.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contract.events import LOG_FILE
from contract.knobs import TORCH_KTO
from tests.helpers.workers import (
    FAST,
    KTO_FAST,
    events_of,
    of_type,
    run_mlx,
    run_torch,
    truncate,
    write_mlx_config,
    write_torch_config,
)
from workers.checkpoints import MLX_FILES, damage


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
def test_the_torch_worker_resumes_from_the_checkpoint_before_a_damaged_one(tmp_path, demo,
                                                                          torch_run):
    source, rc, _ = torch_run  # 6 steps, a checkpoint every 3
    assert rc == 0, (source / LOG_FILE).read_text()[-3000:]
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    latest = tmp_path / "checkpoints" / "checkpoint-6"
    truncate(latest / "adapter_model.safetensors")
    write_torch_config(tmp_path, demo, params=TORCH_KTO.validate({**FAST, "max_steps": 8}),
                       resume_from_checkpoint=str(latest))
    rc, _ = run_torch(tmp_path)
    check_fell_back(tmp_path, rc, 6, 3, 8)


@pytest.mark.slow
def test_the_mlx_worker_resumes_from_the_checkpoint_before_a_damaged_one(tmp_path, demo,
                                                                        mlx_kto_run):
    source, rc, _ = mlx_kto_run  # 8 steps, a checkpoint every 4
    assert rc == 0, (source / LOG_FILE).read_text()[-3000:]
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    latest = tmp_path / "checkpoints" / "checkpoint-8"
    assert damage(latest, MLX_FILES) is None
    truncate(latest / "optimizer.safetensors")
    write_mlx_config(tmp_path, demo, "kto", {**KTO_FAST, "iters": 10},
                     resume_from_checkpoint=str(latest))
    rc, _ = run_mlx(tmp_path)
    check_fell_back(tmp_path, rc, 8, 4, 10)
