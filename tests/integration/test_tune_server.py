"""Auto-tuning through the real server (issue 14): a `tune: auto` job gets the planner's
tune_plan.json in its run folder before its worker starts, the worker's `tune` event is
ingested (params hold the chosen values, `tuning` what was tried, the SSE stream carries
it) and the job page shows the card. The worker is the fake one (tests/fake_worker.py via
PROSPECT_PYTHON), which tunes from the plan as the real workers do; the real torch worker's
own test is tests/integration/test_torch_autotune.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.tune import PLAN_FILE, RESULT_FILE, read_plan, read_result
from tests.helpers.pages import controls
from tests.helpers.server import raw_get, served_copy, sse_events

pytestmark = pytest.mark.slow
PARAMS = {"max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
          "max_length": 128, "device": "cpu"}


@pytest.fixture
def fake_server(demo_home, tmp_path):
    with served_copy(demo_home, tmp_path, fake=True, FAKE_SCENARIO="succeed") as server:
        yield server


def submit(server, **params) -> dict:
    status, job = server.post("/api/jobs", {"name": "tuned", "model": "tiny-demo",
                                            "dataset": "demo-kto",
                                            "params": {**PARAMS, **params}})
    assert status == 201, job
    return job


def test_an_auto_job_is_planned_tuned_and_shows_its_choice(fake_server):
    job = fake_server.wait_job(submit(fake_server, tune="auto")["id"], timeout=120)
    assert job["status"] == "succeeded", job
    run_dir = Path(job["run_dir"])
    plan = read_plan(run_dir)
    assert plan is not None and plan.candidates, "the server wrote no tune_plan.json"
    assert plan.effective_batch == 8
    assert plan.baseline["per_device_train_batch_size"] == 2
    assert all(c.settings["per_device_train_batch_size"] *
               c.settings["gradient_accumulation_steps"] == 8 for c in plan.candidates)
    chosen = plan.candidates[0].settings  # the fake worker's fastest
    assert read_result(run_dir).chosen == chosen
    # The params hold the values used; tune stays auto; tuning says what was tried.
    for name, value in chosen.items():
        assert job["params"][name] == value, name
    assert job["params"]["tune"] == "auto"
    assert job["tuning"]["chosen"] == chosen
    assert len(job["tuning"]["tried"]) >= len(plan.candidates)
    assert job["tuning"]["asked"]["gradient_accumulation_steps"] == 4
    assert job["tuning"]["device_total_bytes"] == plan.device_total_bytes > 0
    # The SSE stream carries the event; the page shows the card; clone runs it exactly.
    events = sse_events(fake_server, job["id"])
    tune = [data for _, kind, data in events if kind == "tune"]
    assert len(tune) == 1 and tune[0]["chosen"] == chosen
    status, body = raw_get(fake_server, f"/jobs/{job['id']}")
    html = body.decode()
    assert status == 200 and 'data-testid="tune-card"' in html
    assert plan.candidates[0].label in html
    status, body = raw_get(fake_server, f"/jobs/new?from={job['id']}")
    form = controls(body.decode())
    assert form["params.tune"]["value"] == "off"
    assert form["params.per_device_train_batch_size"]["value"] == \
        str(chosen["per_device_train_batch_size"])


def test_an_off_job_gets_no_plan_and_keeps_its_knobs(fake_server):
    job = fake_server.wait_job(submit(fake_server)["id"], timeout=120)
    assert job["status"] == "succeeded", job
    run_dir = Path(job["run_dir"])
    assert not (run_dir / PLAN_FILE).exists() and not (run_dir / RESULT_FILE).exists()
    assert job["tuning"] is None and job["params"]["tune"] == "off"
    assert job["params"]["per_device_train_batch_size"] == 2
    assert job["params"]["gradient_accumulation_steps"] == 4
