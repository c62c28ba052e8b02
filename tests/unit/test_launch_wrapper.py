"""workers/launch.py before its launcher runs: a Mac that does not answer over ssh, a plan
that is missing, a launcher that cannot start. Each is an ``error`` event that names the
problem and the fix, then ``done`` failed, the seq going on from the file's last event; the
run's ranks/ is emptied first. Real ssh, real subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.events import EVENTS_FILE, EventWriter, read_events
from contract.job_config import write_config
from contract.launch_plan import LaunchPlan, write_launch_plan
from contract.ranks import write_rank_start
from tests.helpers import ROOT

UNREACHABLE = "prospect-no-such-host.invalid"  # .invalid never resolves (RFC 2606)


def run_wrapper(run_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.launch", "--config",
                           str(run_dir / "config.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def prepared(tmp_path: Path, backend: str = "mlx") -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(run_dir, job_id=1, backend=backend, method="kto", model="m", dataset="d",
                 params={}, resume_from_checkpoint=None)
    events = EventWriter(run_dir / EVENTS_FILE)  # an earlier attempt's events
    for _ in range(3):
        events.emit("log", level="info", message="earlier")
    events.close()
    write_rank_start(run_dir, 0, 2, 0, 0.0)  # left from that attempt
    return run_dir


def new_events(run_dir: Path) -> list:
    events, _ = read_events(run_dir / EVENTS_FILE)
    return [e for e in events if e.seq > 3]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_a_host_that_does_not_answer_stops_the_launch(tmp_path):
    run_dir = prepared(tmp_path)
    write_launch_plan(run_dir, LaunchPlan(
        launcher="mlx", processes=2, starting_port=45000,
        hosts=[{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
               {"ssh": UNREACHABLE, "ips": ["10.255.0.2"]}]))
    done = run_wrapper(run_dir)
    assert done.returncode == 1, done.stderr
    error, end = new_events(run_dir)
    assert (error.seq, error.type, end.seq, end.type) == (4, "error", 5, "done")
    assert error.data["error_type"] == "host_unreachable"
    msg = error.data["message"]
    assert msg.startswith(f"cannot reach host {UNREACHABLE}: `ssh -o BatchMode=yes -o "
                          f"ConnectTimeout=10 {UNREACHABLE} true` exited with code 255: ")
    assert "resolve" in msg.lower(), msg  # ssh's own words
    assert "passwordless ssh" in error.data["hint"] and "Hosts setting" in error.data["hint"]
    assert end.data["status"] == "failed"
    assert not (run_dir / "ranks").exists()  # emptied before the check
    assert not (run_dir / "hostfile.json").exists()  # mlx.launch never ran


def test_no_plan_is_an_error_naming_the_file(tmp_path):
    run_dir = prepared(tmp_path, backend="torch")
    done = run_wrapper(run_dir)
    assert done.returncode == 1
    error, end = new_events(run_dir)
    assert error.data["error_type"] == "launch_plan"
    assert "launch.json" in error.data["message"] and end.data["status"] == "failed"


def test_a_plan_the_launcher_cannot_start(tmp_path):
    run_dir = prepared(tmp_path, backend="torch")
    # Two processes on three GPUs: accelerate_command refuses it before anything starts.
    write_launch_plan(run_dir, LaunchPlan(launcher="accelerate", processes=2,
                                          gpu_ids=[0, 1, 2]))
    done = run_wrapper(run_dir)
    assert done.returncode == 1
    error, end = new_events(run_dir)
    assert error.data["error_type"] == "launch_plan"
    assert "names 3 GPUs for 2 processes" in error.data["message"]
    assert end.data == {"status": "failed", "summary": {}}


def test_the_launcher_runs_the_worker_on_every_process_and_its_code_is_returned(tmp_path):
    """accelerate launch starts workers.torch with this run's config on two CPU processes;
    the config lacks job_id, so each process fails at once: rank 0 alone writes the error
    and the done (after the earlier events), and the launcher's code 1 is the wrapper's."""
    run_dir = prepared(tmp_path, backend="torch")
    write_launch_plan(run_dir, LaunchPlan(launcher="accelerate", processes=2))
    (run_dir / "config.json").write_text(json.dumps({"run_dir": str(run_dir)}))
    done = run_wrapper(run_dir, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "launching 2 processes" in done.stdout
    assert "Root Cause (first observed failure)" in done.stderr  # torchrun's summary
    events = new_events(run_dir)
    assert [e.type for e in events if e.type != "memory"] == ["error", "done"], events
    assert events[0].seq == 4 and events[0].data["error_type"] == "invalid_config"
