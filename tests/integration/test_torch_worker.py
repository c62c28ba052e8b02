"""The torch KTO worker, run for real as the server runs it, on the tiny demo model (CPU)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from contract.events import LOG_FILE
from contract.knobs import TORCH_KTO
from tests.helpers.workers import FAST, events_of, of_type, wait_for_event
from tests.helpers.workers import run_torch as run
from tests.helpers.workers import start_torch as start
from tests.helpers.workers import write_torch_config as write_config
from workers.torch.errors import describe_error


@pytest.mark.slow
def test_short_job_succeeds(torch_run, demo):
    run_dir, rc, events = torch_run  # FAST: 6 steps, a checkpoint every 3
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]

    phases = [s["phase"] for s in of_type(events, "status")]
    assert phases == ["preparing_data", "loading_model", "preparing_data", "training", "saving"]

    metrics = of_type(events, "metric")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for m in metrics:
        assert {"loss", "learning_rate", "grad_norm", "kl"} <= set(m["values"])
    # A batch of 2 may hold only desirable or only undesirable rows: each reward appears when
    # its side is in the batch, and both appear over the run.
    assert all(
        "rewards/chosen" in m["values"] or "rewards/rejected" in m["values"] for m in metrics
    )
    assert any("rewards/chosen" in m["values"] and "rewards/rejected" in m["values"]
               for m in metrics)  # fmt: skip

    progress = of_type(events, "progress")
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6]
    assert all(p["total_steps"] == 6 for p in progress)
    assert progress[-1]["tokens_per_s"] > 0 and progress[-1]["eta_s"] == 0

    assert of_type(events, "memory")
    assert [c["step"] for c in of_type(events, "checkpoint")] == [3, 6]
    assert (run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").is_file()

    adapter = run_dir / "adapter"
    assert of_type(events, "artifact") == [{"kind": "adapter", "path": str(adapter)}]
    assert events[-1].type == "done" and events[-1].data["status"] == "succeeded"
    summary = events[-1].data["summary"]
    assert summary["steps"] == 6 and summary["adapter_path"] == str(adapter)
    assert summary["final_loss"] == metrics[-1]["values"]["loss"]
    assert summary["steps_per_s"] > 0 and summary["train_runtime_s"] > 0
    assert summary["peak_rss_bytes"] > 50 << 20

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo["model"])
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_A" in name for name, _ in model.named_parameters())


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_then_resume_finishes(tmp_path, demo):
    params = TORCH_KTO.validate({**FAST, "max_steps": 5000, "save_steps": 5000})
    write_config(tmp_path, demo, params=params)
    proc = start(tmp_path)
    try:
        wait_for_event(tmp_path, lambda e: e.type == "progress" and e.data["step"] >= 2)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    events = events_of(tmp_path)
    assert rc == 0
    done = events[-1]
    assert done.type == "done" and done.data["status"] == "cancelled"
    (checkpoint,) = of_type(events, "checkpoint")
    step = checkpoint["step"]
    assert step >= 2 and Path(checkpoint["path"]).is_dir()
    assert Path(checkpoint["path"]).name == f"checkpoint-{step}"
    assert of_type(events, "artifact")[0]["kind"] == "adapter"
    assert done.data["summary"]["steps"] == step

    # Resume: the same run folder, events appended after the first done, seq going on.
    params = TORCH_KTO.validate({**FAST, "max_steps": step + 2, "save_steps": 5000})
    write_config(tmp_path, demo, params=params, resume_from_checkpoint=checkpoint["path"])
    rc, events = run(tmp_path)
    assert rc == 0
    resumed = events[done.seq :]
    assert [p["step"] for p in of_type(resumed, "progress")] == [step + 1, step + 2]
    assert resumed[-1].data["status"] == "succeeded"
    assert resumed[-1].data["summary"]["steps"] == step + 2


def test_sigterm_while_loading_ends_cancelled(tmp_path, demo):
    write_config(tmp_path, demo)
    proc = start(tmp_path)
    try:
        # The first memory event comes right before torch, transformers and TRL are imported.
        wait_for_event(tmp_path, lambda e: e.type == "memory", timeout=30)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        proc.kill()
    events = events_of(tmp_path)
    assert rc == 0
    assert events[-1].type == "done" and events[-1].data["status"] == "cancelled"
    assert not of_type(events, "progress")


@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        ({"params": {**TORCH_KTO.defaults(), "bogus_knob": 1}}, "invalid_params"),
        ({"params": {**TORCH_KTO.defaults(), "per_device_train_batch_size": 1}}, "invalid_params"),
        ({"surprise": True}, "invalid_config"),
        ({"dataset": "BAD"}, "dataset"),
    ],
)
def test_bad_config_or_dataset_fails_fast(tmp_path, demo, change, error_type):
    if change.get("dataset") == "BAD":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "a", "completion": "b", "label": true}\n{"prompt": "a"}\n')
        change = {"dataset": str(bad)}
    run_dir = tmp_path / "run"
    path = write_config(run_dir, demo)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    rc, events = run(run_dir, timeout=60)
    assert rc == 1
    (error,) = of_type(events, "error")
    assert error["error_type"] == error_type and error["hint"]
    if error_type == "dataset":
        assert error["row"] == 2 and "row 2" in error["message"]
    assert events[-1].data["status"] == "failed"
    assert "Traceback" in (run_dir / LOG_FILE).read_text()


@pytest.mark.slow
def test_missing_model_fails_with_offline_hint(tmp_path, demo):
    write_config(tmp_path, demo, model="nobody/surely-not-cached-model")
    env_before = os.environ.get("HF_HUB_OFFLINE")
    rc, events = run(tmp_path)
    assert rc == 1 and env_before == os.environ.get("HF_HUB_OFFLINE")
    (error,) = of_type(events, "error")
    assert error["error_type"] == "model_not_found"
    assert "offline" in error["hint"] and "cache" in error["hint"]


def test_error_hints_in_plain_words():
    oom = describe_error(RuntimeError("MPS backend out of memory (MPS allocated: 20 GB)"))
    assert oom["error_type"] == "out_of_memory"
    assert "per_device_train_batch_size" in oom["hint"] and "max_length" in oom["hint"]
    assert "gradient_checkpointing" in oom["hint"] and "Apple GPU" in oom["hint"]
    cuda = describe_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert cuda["error_type"] == "out_of_memory" and "GPU" in cuda["hint"]
    other = describe_error(KeyError("x"))
    assert other["error_type"] == "KeyError" and "worker.log" in other["hint"]
