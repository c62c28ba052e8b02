"""Races through the real server: a cancel right after the submit, two servers on one home.

The worker is the fake one (tests/fake_worker.py, via PROSPECT_PYTHON): it finishes a job in
a fraction of a second, so a lost cancel shows as a job that `succeeded`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from contract.events import EVENTS_FILE, Event, read_events
from tests.helpers import ROOT
from tests.helpers.server import make_server, served_copy, server_env

pytestmark = pytest.mark.slow
TRIES = 15


@pytest.fixture
def fake_server(demo_home, tmp_path):
    with served_copy(demo_home, tmp_path, fake=True, FAKE_SCENARIO="succeed") as server:
        yield server


def done_statuses(run_dir: str) -> list[str]:
    events, _ = read_events(Path(run_dir) / EVENTS_FILE)
    return [e.data["status"] for e in events if isinstance(e, Event) and e.type == "done"]


def test_a_cancel_right_after_the_submit_is_never_lost(fake_server):
    body = {"model": "tiny-demo", "dataset": "demo-kto", "params": {"max_steps": 3}}
    started = 0
    for i in range(TRIES):
        status, job = fake_server.post("/api/jobs", {**body, "name": f"race-{i}"})
        assert status == 201, job
        status, answer = fake_server.post(f"/api/jobs/{job['id']}/cancel")
        assert status == 200, answer
        # Either the cancel won (cancelled, no worker) or the launch did (marked, signalled).
        assert answer["status"] == "cancelled" or answer["status"] in ("starting", "running")
        job = fake_server.wait_job(job["id"], timeout=60)
        assert job["status"] == "cancelled", (i, answer, job)
        assert "succeeded" not in done_statuses(job["run_dir"]), (i, job)
        if job["started_at"]:
            started += 1
            assert datetime.fromisoformat(job["finished_at"]) >= \
                datetime.fromisoformat(job["started_at"]), job
    print(f"{TRIES}/{TRIES} cancelled; the worker had been started in {started}")


def test_a_second_server_on_one_home_refuses_to_start_and_kill_9_frees_it(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    first = make_server(home)
    first.start()
    second = make_server(home)
    try:
        t0 = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(second.port)],
            cwd=ROOT, env=server_env(home), capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        message = refused.stderr
        assert f"pid {first.proc.pid}" in message and f":{first.port}" in message, message
        assert str(home) in message and "PROSPECT_HOME" in message, message
        print(f"refused in {time.monotonic() - t0:.2f}s: {message.strip()}")
        first.get("/api/jobs")  # the first one answers on, untouched

        first.stop(signal.SIGKILL)  # the kernel drops the lock with the process
        second.start()
        second.get("/api/jobs")
    finally:
        for server in (first, second):
            server.stop()
