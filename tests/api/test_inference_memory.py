"""Loaded models and training jobs share one memory budget (PROSPECT_MEMORY_BUDGET_GB caps
it here, so the tiny model and a tiny job are enough to fill it): a model that would not fit
beside a running job is refused with a 409 and the plan; a job about to start that would not
fit beside a loaded model unloads it first. Inference worker and job worker are both fakes
(tests/fake_inference_worker.py, tests/fake_worker.py)."""

from __future__ import annotations

import sys

import pytest
from sqlmodel import Session

from app.models import Job
from tests.helpers.inference import Served, serve, wait_for
from tests.helpers.workers import FAKE

# Each side alone needs ~0.47 GiB (the torch runtime, mostly): one fits in 0.75, not two.
BUDGET_GB = 0.75


@pytest.fixture()
def tight(tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setenv("FAKE_SCENARIO", "slow")  # the job runs until cancelled
    app, server, thread, url = serve(tmp_path / "home", memory_budget_gb=BUDGET_GB,
                                     python=str(python), poll_interval_s=0.1)
    s = Served(app, url)
    yield s
    for job in s.http.get("/api/jobs").json():
        if job["status"] in ("queued", "starting", "running"):
            s.http.post(f"/api/jobs/{job['id']}/cancel", json={})
    wait_for(lambda: all(j["pid"] is None for j in s.http.get("/api/jobs").json()),
             what="the jobs to end")
    s.close(server, thread)


def queue_job(s: Served) -> int:
    """A queued torch KTO job on tiny-demo, as the API would have stored it."""
    home = s.app.state.settings.home_dir
    with Session(s.app.state.engine) as session:
        job = Job(name="tight", backend="torch", method="kto", model="tiny-demo",
                  dataset="demo-kto", model_path=str(home / "models" / "tiny-demo"),
                  dataset_path=str(home / "d.jsonl"), params={"max_length": 128})
        session.add(job)
        session.flush()
        job.run_dir = str(home / "runs" / f"{job.id:06d}")
        session.commit()
        job_id = job.id
    s.app.state.supervisor.wake()
    return job_id


def status(s: Served, job_id: int) -> str:
    return s.http.get(f"/api/jobs/{job_id}").json()["status"]


def test_a_model_that_does_not_fit_beside_a_running_job_is_409(tight):
    job_id = queue_job(tight)
    wait_for(lambda: status(tight, job_id) == "running", what="the job to run")
    resp = tight.chat("hello")
    assert resp.status_code == 409, resp.text
    err = resp.json()["error"]
    assert err["code"] == "memory" and err["type"] == "invalid_request_error"
    assert err["message"].startswith("tiny-demo was not loaded: it would not fit in memory.")
    assert f"beside job {job_id} (tight) at " in err["message"]
    assert "PROSPECT_MEMORY_BUDGET_GB allows 768 MiB" in err["message"]
    assert "finish or cancel the running job" in err["message"]
    assert err["plan"]["verdict"] == "won't fit"
    assert err["plan"]["budget_bytes"] <= BUDGET_GB * 2**30
    print(f"\n409: {err['message']}")
    # Streaming asks the same question first.
    status_code, events = tight.stream("hello")
    assert status_code == 409 and events[0]["error"]["code"] == "memory"
    assert tight.http.get("/api/inference").json()["workers"] == []
    # Once the job is gone there is room.
    tight.http.post(f"/api/jobs/{job_id}/cancel", json={})
    wait_for(lambda: tight.http.get(f"/api/jobs/{job_id}").json()["pid"] is None,
             what="the job to end")
    assert tight.chat("hello").status_code == 200


def test_a_job_that_needs_the_memory_unloads_the_loaded_model(tight, monkeypatch):
    monkeypatch.setenv("FAKE_INFERENCE_MEMORY", str(500 * 2**20))  # what a real one holds
    assert tight.chat("hello", model="tiny-demo@job-1").status_code == 200
    assert len(tight.http.get("/api/inference").json()["workers"]) == 1
    job_id = queue_job(tight)
    wait_for(lambda: status(tight, job_id) == "running", what="the job to run")
    body = tight.http.get("/api/inference").json()
    assert body["workers"] == []
    assert body["last_unload"]["model"] == "tiny-demo"
    assert body["last_unload"]["reason"] == f"job {job_id} needed the memory"
    # And while it runs, loading again is refused rather than crashing either.
    assert tight.chat("hello").status_code == 409


def test_a_job_that_fits_beside_the_loaded_model_leaves_it(tight):
    # The fake reports 50 MB: the job's ~0.47 GiB fits beside that in 0.75 GiB.
    assert tight.chat("hello").status_code == 200
    job_id = queue_job(tight)
    wait_for(lambda: status(tight, job_id) == "running", what="the job to run")
    body = tight.http.get("/api/inference").json()
    assert len(body["workers"]) == 1 and body["last_unload"] is None
