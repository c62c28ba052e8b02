"""tune: auto on the torch KTO worker, for real on the tiny demo model (CPU): through the real
server (it writes the plan, the worker times the settings, emits a `tune` event and trains
with the fastest), and the worker alone for a resume (the saved choice reused, nothing timed
again) and a SIGTERM while it times (a clean cancel)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from contract.events import LOG_FILE
from contract.knobs import TORCH_KTO
from contract.tune import PLAN_FILE, RESULT_FILE, Candidate, TunePlan, write_plan
from tests.helpers.server import served_copy, sse_events, submit
from tests.helpers.workers import events_of, of_type, run_torch, start_torch, wait_for_event
from tests.helpers.workers import write_torch_config as write_config

# Effective batch 4; a learning rate that moves the loss in 3 steps, so curves can differ.
TUNED = {"max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
         "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 3, "max_length": 128,
         "device": "cpu", "tune": "auto"}


def setting(batch: int, accum: int, ckpt: bool) -> dict:
    return {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
            "gradient_checkpointing": ckpt, "precompute_ref_log_probs": False,
            "use_liger_kernel": False}


def plan(*settings: dict) -> TunePlan:
    return TunePlan(candidates=[Candidate(s) for s in settings], baseline=setting(2, 2, True),
                    budget_bytes=4 << 30, device_total_bytes=8 << 30, probe_budget_s=60,
                    probe_steps=2, effective_batch=4)


@pytest.fixture()
def timing_server(demo_home, tmp_path):
    """A real server that times settings even for a job this short: its probe budget (5 % of
    a few seconds) is below the 10 s default of PROSPECT_TUNE_MIN_PROBE_S, under which the
    plan's first setting is taken untimed (tests/unit/test_torch_tune.py)."""
    with served_copy(demo_home, tmp_path, PROSPECT_TUNE_MIN_PROBE_S="0") as server:
        yield server


@pytest.mark.slow
def test_the_server_tunes_a_job_which_trains_as_an_untuned_one_with_the_chosen_values(
        timing_server):
    live_server = timing_server
    job = submit(live_server, "tuned", **TUNED)
    stream = sse_events(live_server, job["id"])
    job = live_server.wait_job(job["id"])
    assert job["status"] == "succeeded", (job["error"], job["log_tail"])

    tunes = [data for _, kind, data in stream if kind == "tune"]
    assert len(tunes) == 1
    tune = tunes[0]
    chosen = tune["chosen"]
    assert chosen["per_device_train_batch_size"] * chosen["gradient_accumulation_steps"] == 4
    assert tune["message"].startswith("tried ") and "chose batch" in tune["message"]
    assert any(t["outcome"] == "ok" and t["samples_per_s"] > 0 for t in tune["tried"])
    statuses = [d["message"] for _, k, d in stream if k == "status" and d["phase"] == "tuning"]
    assert statuses and statuses[0].startswith("timing setting 1 of ")

    # The job's params hold the values used (tune stays auto), and the run used them.
    assert {k: job["params"][k] for k in chosen} == chosen and job["params"]["tune"] == "auto"
    assert job["tuning"]["message"] == tune["message"]
    run_dir = Path(job["run_dir"])
    assert (run_dir / PLAN_FILE).is_file() and (run_dir / RESULT_FILE).is_file()
    state = json.loads((run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json")
                       .read_text())
    assert state["train_batch_size"] == chosen["per_device_train_batch_size"]

    # The probe's steps were not training steps: the same knobs untuned give the same curve.
    again = submit(live_server, "untuned", **{**TUNED, **chosen, "tune": "off"})
    again = live_server.wait_job(again["id"])
    assert again["status"] == "succeeded", (again["error"], again["log_tail"])
    assert again["tuning"] is None
    names = "loss,grad_norm,rewards/chosen,rewards/rejected"
    tuned = live_server.get(f"/api/jobs/{job['id']}/metrics?names={names}")
    untuned = live_server.get(f"/api/jobs/{again['id']}/metrics?names={names}")
    assert tuned["step"] == [1, 2, 3]
    assert tuned == untuned
    assert len(set(tuned["loss"])) > 1  # the curve moved: equal curves say something


@pytest.mark.slow
def test_a_resume_reuses_the_saved_choice_and_times_nothing(tmp_path, demo):
    params = TORCH_KTO.validate(TUNED)
    write_config(tmp_path, demo, params=params)
    write_plan(tmp_path, plan(setting(4, 1, False), setting(2, 2, False)))
    rc, events = run_torch(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    chosen = of_type(events, "tune")[0]["chosen"]
    assert json.loads((tmp_path / RESULT_FILE).read_text())["chosen"] == chosen
    first = len(events)

    write_config(tmp_path, demo, params={**params, "max_steps": 5},
                 resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-3"))
    rc, events = run_torch(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    later = events[first:]
    tuning = [s["message"] for s in of_type(later, "status") if s["phase"] == "tuning"]
    assert len(tuning) == 1 and tuning[0].startswith("reusing the tuned settings: tried ")
    assert not of_type(later, "tune")
    assert [m["step"] for m in of_type(later, "metric")] == [4, 5]
    assert later[-1].data["status"] == "succeeded"
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-5" / "trainer_state.json")
                       .read_text())
    assert state["train_batch_size"] == chosen["per_device_train_batch_size"]


@pytest.mark.slow
def test_sigterm_while_timing_cancels_cleanly(tmp_path, demo):
    write_config(tmp_path, demo, params=TORCH_KTO.validate(TUNED))
    many = [setting(2, 2, ckpt) for ckpt in (False, True)] * 1 + [setting(4, 1, False)]
    write_plan(tmp_path, plan(*many))
    proc = start_torch(tmp_path)
    try:
        wait_for_event(tmp_path, lambda e: e.type == "status" and e.data["phase"] == "tuning",
                       timeout=120)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
    events = events_of(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    assert events[-1].type == "done" and events[-1].data["status"] == "cancelled"
    assert not of_type(events, "tune") and not of_type(events, "error")
    assert not (tmp_path / RESULT_FILE).exists() and not (tmp_path / "adapter").exists()
    assert "Traceback" not in (tmp_path / LOG_FILE).read_text()
    assert waited < 30


@pytest.mark.slow
def test_liger_asked_for_by_hand_off_cuda_is_refused_with_the_fix(tmp_path, demo):
    write_config(tmp_path, demo, params=TORCH_KTO.validate({**TUNED, "tune": "off",
                                                             "use_liger_kernel": True}))
    rc, events = run_torch(tmp_path)
    assert rc == 1
    error = of_type(events, "error")[0]
    assert error["error_type"] == "liger_kernel"
    assert "Liger's kernels run on CUDA only (this job runs on cpu)" in error["message"]
    assert "Turn use_liger_kernel off" in error["hint"]
    assert "loading_model" not in [s["phase"] for s in of_type(events, "status")]
