"""A torch KTO job on two CPU processes (accelerate launch over gloo) through the real
server: events written once, cancel and resume on one process, a rank killed, and the
server killed and started again while the processes train on."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from contract.events import EVENTS_FILE, Event, read_events
from contract.ranks import read_ranks
from tests.helpers.server import LiveServer, kill_workers, served_copy, submit

pytestmark = pytest.mark.slow

CANCEL_STEPS = 40
RUN = {"max_steps": 6, "logging_steps": 1, "gradient_accumulation_steps": 1,
       "per_device_train_batch_size": 2, "max_length": 64, "save_steps": 1000,
       "device": "cpu", "num_processes": 2, "eval_fraction": 0}
WAIT_S = 600  # two processes loading torch on a busy 2-core machine


def file_events(run_dir: str) -> list[Event]:
    events, _ = read_events(Path(run_dir) / EVENTS_FILE)
    assert all(isinstance(e, Event) for e in events), events
    return events


def metric_rows(home: Path, job_id: int) -> list[tuple[int, str]]:
    with sqlite3.connect(home / "prospect.db") as db:
        return list(db.execute("SELECT step, name FROM metric WHERE job_id = ?", (job_id,)))


def assert_each_step_once(server: LiveServer, job: dict) -> list[int]:
    """Every metric (file and database) and every progress step once; returns the steps."""
    events = file_events(job["run_dir"])
    logged = Counter((e.data["step"], k) for e in events if e.type == "metric"
                     for k in e.data["values"])
    assert logged and max(logged.values()) == 1, logged
    stored = Counter(metric_rows(server.home, job["id"]))
    assert stored == logged, (stored, logged)
    steps = [e.data["step"] for e in events if e.type == "progress"]
    assert len(steps) == len(set(steps)) and steps == sorted(steps), steps
    assert [e.type for e in events].count("done") >= 1
    return steps


def rank_processes_alive(run_dir: str) -> list[int]:
    alive = []
    for info in read_ranks(Path(run_dir)):
        with contextlib.suppress(psutil.Error):
            if abs(psutil.Process(info.pid).create_time() - info.started_at) < 1 and \
                    psutil.Process(info.pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(info.pid)
    return alive


def wait_ranks(run_dir: str, n: int, timeout: float = WAIT_S) -> list:
    t0 = time.monotonic()
    while len(ranks := read_ranks(Path(run_dir))) < n:
        assert time.monotonic() - t0 < timeout, ranks
        time.sleep(0.2)
    return ranks


@contextlib.contextmanager
def server_for(demo_home: Path, root: Path):
    with served_copy(demo_home, root, OMP_NUM_THREADS="1") as server:
        try:
            yield server
        finally:  # ranks run in sessions of their own: kill_workers' group kill misses them
            for job in server.get("/api/jobs?limit=1000"):
                for pid in rank_processes_alive(job["run_dir"]) if job["run_dir"] else []:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def test_two_processes_write_each_event_once(demo_home, tmp_path):
    with server_for(demo_home, tmp_path) as server:
        job = submit(server, "ddp", **RUN)
        done = server.wait_job(job["id"], timeout=WAIT_S)
        assert done["status"] == "succeeded", (done["error"], done["log_tail"])
        assert (Path(done["run_dir"]) / "launch.json").is_file()
        steps = assert_each_step_once(server, done)
        assert steps[-1] == RUN["max_steps"]
        ranks = read_ranks(Path(done["run_dir"]))
        assert [(r.rank, r.world_size, r.status) for r in ranks] == \
            [(0, 2, "succeeded"), (1, 2, "succeeded")]
        memory = server.get(f"/api/jobs/{job['id']}/series/memory")
        assert {"rank0_active", "rank1_active"} <= set(memory), sorted(memory)
        assert any(v for v in memory["rank1_active"]), memory["rank1_active"]
        adapters = server.get("/api/adapters")
        assert any(a["job_id"] == job["id"] for a in adapters), adapters
        assert not rank_processes_alive(done["run_dir"])


def test_cancel_then_resume_on_one_process(demo_home, tmp_path):
    with server_for(demo_home, tmp_path) as server:
        # steps enough that the cancel (API, wrapper, torchrun, the ranks' next step end)
        # lands well before the last one on a slow machine
        job = submit(server, "cancel-resume", **{**RUN, "max_steps": CANCEL_STEPS})
        server.wait_step(job["id"], 2, timeout=WAIT_S)
        status, _ = server.post(f"/api/jobs/{job['id']}/cancel")
        assert status == 200
        stopped = server.wait_job(job["id"], timeout=WAIT_S)
        assert stopped["status"] == "cancelled", (stopped["error"], stopped["log_tail"])
        assert stopped["last_checkpoint"], stopped
        assert not rank_processes_alive(stopped["run_dir"])
        at = int(Path(stopped["last_checkpoint"]).name.removeprefix("checkpoint-"))
        assert at >= 2

        status, body = server.post(f"/api/jobs/{job['id']}/resume",
                                   {"params": {"num_processes": 1}})
        assert status == 200, body
        assert body["params"]["num_processes"] == 1
        done = server.wait_job(job["id"], timeout=WAIT_S)
        assert done["status"] == "succeeded", (done["error"], done["log_tail"])
        assert not (Path(done["run_dir"]) / "launch.json").exists()  # one process
        steps = assert_each_step_once(server, done)
        assert steps == list(range(steps[0], CANCEL_STEPS + 1)) and steps[0] <= 1, steps
        assert any(a["job_id"] == job["id"] for a in server.get("/api/adapters"))


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_fails_the_job_and_leaves_no_process(demo_home, tmp_path, victim):
    """Rank 1 killed: rank 0 names it. Rank 0 killed: no done event; the server names it
    from the rank files once the wrapper has ended."""
    with server_for(demo_home, tmp_path) as server:
        job = submit(server, "rank-killed", **{**RUN, "max_steps": 200})
        server.wait_step(job["id"], 1, timeout=WAIT_S)
        ranks = wait_ranks(job["run_dir"], 2)
        os.kill(ranks[victim].pid, signal.SIGKILL)  # as the kernel's OOM killer would
        done = server.wait_job(job["id"], timeout=WAIT_S)
        assert done["status"] == "failed", done
        assert f"rank {victim} " in done["error"], (done["error"], done["log_tail"])
        assert done["error_type"] == "rank_died", done["error"]
        assert not rank_processes_alive(done["run_dir"])


def test_server_killed_mid_run_re_adopts_the_job(demo_home, tmp_path):
    with server_for(demo_home, tmp_path) as server:
        job = submit(server, "survive", **{**RUN, "max_steps": 10})
        running = server.wait_step(job["id"], 2, timeout=WAIT_S)
        wrapper = running["pid"]
        server.stop(signal.SIGKILL)
        assert psutil.pid_exists(wrapper)  # the launch outlives the server
        server.start()
        try:
            again = server.get(f"/api/jobs/{job['id']}")
            assert again["pid"] == wrapper, again
            done = server.wait_job(job["id"], timeout=WAIT_S)
        finally:
            kill_workers(server)
        assert done["status"] == "succeeded", (done["error"], done["log_tail"])
        steps = assert_each_step_once(server, done)
        assert steps[-1] == 10
        assert not rank_processes_alive(done["run_dir"])
