"""Real KTO jobs on the tiny demo model, through the real server's REST API."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.server import FAST, sse_events, submit

pytestmark = pytest.mark.slow

def test_a_kto_job_succeeds_with_metrics_for_every_step_and_a_peft_adapter(live_server):
    job = submit(live_server, "happy")
    stream = sse_events(live_server, job["id"])  # live, while it trains, to the end
    job = live_server.wait_job(job["id"])
    assert job["status"] == "succeeded", (job["error"], job["log_tail"])
    assert job["step"] == job["total_steps"] == 8

    m = live_server.get(f"/api/jobs/{job['id']}/metrics")
    assert m["step"] == list(range(1, 9))
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "kl",
                 "learning_rate"):
        assert all(v is not None for v in m[name]), (name, m[name])
    only_loss = live_server.get(f"/api/jobs/{job['id']}/metrics?names=loss&since_step=5")
    assert set(only_loss) == {"step", "loss"} and only_loss["step"] == [6, 7, 8]

    # The SSE stream carried every event once, in order, ending with done.
    seqs = [s for s, _, _ in stream]
    assert seqs == list(range(1, len(seqs) + 1)) and stream[-1][1] == "done"
    types = {t for _, t, _ in stream}
    assert {"status", "progress", "metric", "memory", "checkpoint", "artifact"} <= types
    # Resumable: from Last-Event-ID it sends only what came after, and a finished job's
    # exhausted stream answers 204 so EventSource stops reconnecting.
    assert [s for s, _, _ in sse_events(live_server, job["id"], seqs[-3])] == seqs[-2:]
    assert sse_events(live_server, job["id"], seqs[-1]) == []

    logs = live_server.get(f"/api/jobs/{job['id']}/logs")
    assert logs["size"] > 0 and logs["next_offset"] == min(logs["size"], 65536)

    adapter = Path(job["adapter_path"])
    assert (adapter / "adapter_config.json").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(live_server.home / "models" / "tiny-demo")
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_a_cancelled_job_ends_cancelled_with_a_checkpoint(live_server):
    job = submit(live_server, "to-cancel", max_steps=5000, save_steps=5000)
    live_server.wait_step(job["id"], 3)
    status, body = live_server.post(f"/api/jobs/{job['id']}/cancel")
    assert status == 200, body
    job = live_server.wait_job(job["id"])
    assert job["status"] == "cancelled", (job["error"], job["log_tail"])
    ckpt = Path(job["last_checkpoint"])
    assert ckpt.is_dir() and (ckpt / "adapter_model.safetensors").is_file()
    assert (Path(job["adapter_path"]) / "adapter_config.json").is_file()
    assert live_server.post(f"/api/jobs/{job['id']}/cancel")[0] == 409


def test_a_crashed_worker_fails_the_job_with_the_log_tail(live_server):
    job = submit(live_server, "to-crash", max_steps=5000, save_steps=5000)
    j = live_server.wait_step(job["id"], 2)
    os.kill(j["pid"], signal.SIGKILL)  # no chance to say goodbye
    job = live_server.wait_job(job["id"])
    assert job["status"] == "failed"
    assert job["exit_code"] == -9 and "SIGKILL" in job["error"]
    assert job["hint"] and "memory" in job["hint"]
    assert job["log_tail"]
    # What it logged before dying is kept.
    assert len(live_server.get(f"/api/jobs/{job['id']}/metrics")["step"]) >= 2
    # The queue goes on, and delete removes the run folder.
    run_dir = Path(job["run_dir"])
    assert live_server.request("DELETE", f"/api/jobs/{job['id']}")[0] == 204
    assert not run_dir.exists()
    assert live_server.request("GET", f"/api/jobs/{job['id']}")[0] == 404


def test_a_worker_error_is_reported_with_type_and_hint(live_server):
    broken = live_server.home / "models" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    status, job = live_server.post("/api/jobs", {"model": str(broken), "dataset": "demo-kto",
                                                 "params": FAST})
    assert status == 201
    job = live_server.wait_job(job["id"])
    assert job["status"] == "failed" and job["exit_code"] == 1
    assert job["error_type"] and job["error"] and job["hint"]
