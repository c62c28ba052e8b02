"""An MLX job over several Macs, through the real server: the Hosts setting, a job whose
``hosts`` knob names them, ``python -m workers.launch`` running ``mlx.launch`` with the run's
hostfile, rank 0 reporting for all. Both "Macs" here are this machine (ssh name 127.0.0.1,
which mlx.launch runs without ssh), as two processes over the ring backend on loopback; a
host that ssh cannot reach is a real ssh attempt at a name that cannot resolve."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from contract.events import EVENTS_FILE  # noqa: E402
from contract.events import read_events as read_events_file  # noqa: E402
from contract.ranks import RankInfo, read_ranks  # noqa: E402
from tests.helpers.server import kill_workers, make_server  # noqa: E402
from tests.helpers.workers import KTO_FAST  # noqa: E402

pytestmark = pytest.mark.slow

HERE = {"name": "here", "ssh": "127.0.0.1", "ips": ["127.0.0.1"]}
TWIN = {"name": "twin", "ssh": "127.0.0.1", "ips": ["127.0.0.1"]}  # this machine again
FAR = {"name": "far", "ssh": "unreachable.invalid", "ips": ["192.0.2.1"]}
# Long enough to stop in the middle (a step takes ~0.1-0.5 s here), nothing saved on the way.
LONG = {**KTO_FAST, "iters": 60, "steps_per_report": 5, "steps_per_save": 1000}


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("mlx-hosts-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    live = make_server(home)
    live.start()
    status, body = live.request("PUT", "/api/settings/hosts", {
        "backend": "ring", "envs": [], "hosts": [HERE, TWIN, FAR]})
    assert status == 200, body
    yield live
    kill_workers(live)
    live.stop()


def submit(server, hosts: str, params: dict) -> dict:
    status, job = server.post("/api/jobs", {
        "name": f"mlx-{hosts}", "backend": "mlx", "method": "kto", "model": "tiny-demo",
        "dataset": "demo-kto", "params": {**params, "hosts": hosts}})
    assert status == 201, job
    return job


def events(job: dict, kind: str, after_seq: int = 0) -> list[dict]:
    found, _ = read_events_file(Path(job["run_dir"]) / EVENTS_FILE)
    return [e.data for e in found if e.type == kind and e.seq > after_seq]


def running(info: RankInfo) -> bool:
    """The rank's own process (pid and start time both match) still runs."""
    try:
        proc = psutil.Process(info.pid)
        return abs(proc.create_time() - info.started_at) < 1.0 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def assert_no_rank_left(job: dict) -> list[RankInfo]:
    ranks = read_ranks(Path(job["run_dir"]))
    assert [r.rank for r in ranks] == [0, 1], ranks
    assert not [r for r in ranks if running(r)], ranks
    return ranks


def test_a_job_over_two_hosts_trains_once_and_reports_every_rank(server):
    job = server.wait_job(submit(server, "here,twin", KTO_FAST)["id"])
    assert job["status"] == "succeeded", (job["error"], job["log_tail"])
    assert job["step"] == job["total_steps"] == 8
    # rank 0 alone reports: each step once, in order
    assert [p["step"] for p in events(job, "progress")] == list(range(1, 9))
    done = events(job, "done")
    assert len(done) == 1 and done[0]["summary"]["processes"] == 2
    ranked = [m["backend"]["ranks"] for m in events(job, "memory")
              if m["backend"].get("ranks")]
    assert ranked, "no memory event carries the ranks"
    for rank in ranked[-1]:
        assert rank["host"] and rank["peak_bytes"] > 0 and rank["driver_bytes"] > 0
    assert [r["rank"] for r in ranked[-1]] == [0, 1]
    chart = server.get(f"/api/jobs/{job['id']}/series/memory")  # the job page's memory chart
    assert [r["rank"] for r in chart["ranks"]] == [0, 1]
    assert any(v for v in chart["rank1_active"]), chart
    assert Path(job["adapter_path"], "adapters.safetensors").is_file()
    assert job["id"] in [a["job_id"] for a in server.get("/api/adapters")]
    assert_no_rank_left(job)


def test_a_cancelled_job_stops_every_rank_at_one_step_and_resumes(server):
    job = submit(server, "here,twin", LONG)
    server.wait_step(job["id"], 3, timeout=240)
    assert server.post(f"/api/jobs/{job['id']}/cancel")[0] == 200
    job = server.wait_job(job["id"])
    assert job["status"] == "cancelled", (job["error"], job["log_tail"])
    at = int(Path(job["last_checkpoint"]).name.removeprefix("checkpoint-"))
    assert 3 <= at < LONG["iters"] and job["step"] == at
    assert (Path(job["last_checkpoint"]) / "state.json").is_file()
    assert [r.status for r in assert_no_rank_left(job)] == ["cancelled", "cancelled"]

    cancel_seq = job["last_seq"]
    assert [p["step"] for p in events(job, "progress")] == list(range(1, at + 1))
    status, body = server.post(f"/api/jobs/{job['id']}/resume")
    assert status == 200, body
    job = server.wait_job(job["id"])
    assert job["status"] == "succeeded", (job["error"], job["log_tail"])
    assert job["step"] == LONG["iters"]
    steps = [p["step"] for p in events(job, "progress", after_seq=cancel_seq)]
    assert steps == list(range(at + 1, LONG["iters"] + 1))
    assert events(job, "done", after_seq=cancel_seq)[0]["summary"]["processes"] == 2
    assert_no_rank_left(job)


def test_a_host_ssh_cannot_reach_fails_the_job_naming_it(server):
    job = server.wait_job(submit(server, "here,far", KTO_FAST)["id"], timeout=120)
    assert job["status"] == "failed", job
    assert job["error_type"] == "host_unreachable", (job["error"], job["log_tail"])
    assert "unreachable.invalid" in job["error"]
    assert "ssh -o BatchMode=yes -o ConnectTimeout=10 unreachable.invalid true" in job["error"]
    assert not read_ranks(Path(job["run_dir"]))  # no rank was started


@pytest.mark.parametrize("victim", [1, 0])
def test_a_rank_that_dies_fails_the_job_naming_it_and_leaves_no_rank(server, victim):
    """Rank 1 dead: rank 0 reports it. Rank 0 dead (no done event, and mlx.launch exits 0
    whatever its ranks did): the server reads it from the rank files."""
    job = submit(server, "here,twin", LONG)
    server.wait_step(job["id"], 3, timeout=240)
    dead = next(r for r in read_ranks(Path(job["run_dir"])) if r.rank == victim)
    os.kill(dead.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    job = server.wait_job(job["id"])
    assert job["status"] == "failed", (job["error"], job["log_tail"])
    assert f"rank {victim} " in job["error"], job["error"]
    assert job["error_type"] == "rank_died", job["error"]
    assert_no_rank_left(job)


def test_a_remote_rank_whose_session_hangs_up_ends_the_job_cancelled(server):
    """SIGHUP (a rank's ssh session to its Mac closed) is a cancel there: every rank stops
    at the same step and rank 0 saves, as for a cancel from the server."""
    job = submit(server, "here,twin", LONG)
    server.wait_step(job["id"], 3, timeout=240)
    rank1 = next(r for r in read_ranks(Path(job["run_dir"])) if r.rank == 1)
    os.kill(rank1.pid, signal.SIGHUP)
    job = server.wait_job(job["id"])
    assert job["status"] == "cancelled", (job["error"], job["log_tail"])
    assert job["step"] == int(Path(job["last_checkpoint"]).name.removeprefix("checkpoint-"))
    assert_no_rank_left(job)


@pytest.mark.parametrize("how", ["server", "rank 1 alone"])
def test_a_cancel_while_the_ranks_start_ends_the_job_cancelled(server, how):
    """Before training a rank asked to stop goes on to the next point where all ranks ask
    (after starting, after loading) and they all stop there: one that left at once would
    have the others fail in their next collective, or wait in mx.distributed.init forever.
    "rank 1 alone": only a remote rank heard of it (its ssh session closed)."""
    job = submit(server, "here,twin", LONG)
    run_dir = Path(job["run_dir"])
    deadline = time.monotonic() + 120
    while len(read_ranks(run_dir)) < 2:  # both ranks are up, neither is training yet
        assert time.monotonic() < deadline, server.get(f"/api/jobs/{job['id']}")
        time.sleep(0.05)
    if how == "server":
        assert server.post(f"/api/jobs/{job['id']}/cancel")[0] == 200
    else:
        os.kill(read_ranks(run_dir)[1].pid, signal.SIGTERM)
    job = server.wait_job(job["id"], timeout=120)
    assert job["status"] == "cancelled", (job["error"], job["log_tail"])
    assert job["step"] < LONG["iters"]
    assert [r.status for r in assert_no_rank_left(job)] == ["cancelled", "cancelled"]
