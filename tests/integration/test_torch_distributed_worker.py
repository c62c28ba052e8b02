"""The torch KTO worker as two processes under ``accelerate launch`` (DDP over gloo on the CPU),
started with contract.launch_plan.accelerate_command as the launcher wrapper starts it, on the
tiny demo model: no server, no wrapper. Rank 0 alone writes the events; every rank leaves its
start and end in ranks/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.events import CONFIG_FILE, LOG_FILE
from contract.knobs import TORCH_KTO
from contract.launch_plan import LaunchPlan, accelerate_command
from contract.ranks import read_ranks
from contract.tune import RESULT_FILE, Candidate, TunePlan, write_plan
from tests.helpers import ROOT
from tests.helpers.workers import FAST, events_of, of_type, wait_for_event
from tests.helpers.workers import run_torch as run_one_process
from tests.helpers.workers import write_torch_config as write_config
from workers.checkpoints import TORCH_FILES, damage
from workers.world import alive

pytestmark = pytest.mark.slow
LONG = {**FAST, "max_steps": 5000, "save_steps": 5000}  # stopped by the test, not by steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir: Path) -> subprocess.Popen:
    """As the launcher wrapper starts it: cwd = repo root, its own session, output to the log."""
    plan = LaunchPlan(launcher="accelerate", processes=2, main_process_port=_free_port())
    cmd = accelerate_command(plan, sys.executable, run_dir / CONFIG_FILE, run_dir)
    with open(run_dir / LOG_FILE, "ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _log(run_dir: Path) -> str:
    return (run_dir / LOG_FILE).read_text(errors="replace")[-4000:]


def _wait(proc: subprocess.Popen, run_dir: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the launch did not end; log:\n{_log(run_dir)}") from None


def _no_rank_left(run_dir: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(r) for r in read_ranks(run_dir)):
        assert time.monotonic() < deadline, "a rank process is still running"
        time.sleep(0.1)


@pytest.fixture
def launched():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:  # a failed test leaves nothing running
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _two_process_config(run_dir: Path, demo, **knobs) -> None:
    write_config(run_dir, demo, params=TORCH_KTO.validate({**knobs, "num_processes": 2}))


def _speed(checkpointing: bool) -> dict:
    return {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
            "gradient_checkpointing": checkpointing, "precompute_ref_log_probs": False,
            "use_liger_kernel": False}


def test_two_processes_train_once_and_rank_zero_alone_reports(tmp_path, demo, launched):
    # tune: auto with a plan: under several processes nothing is timed, the plan's first
    # setting is taken (here with gradient checkpointing, under DDP).
    first, second = _speed(True), _speed(False)
    write_plan(tmp_path, TunePlan(candidates=[Candidate(first), Candidate(second)],
                                  baseline=second, budget_bytes=4 << 30, probe_budget_s=60,
                                  probe_steps=2, effective_batch=2))
    _two_process_config(tmp_path, demo, **FAST, tune="auto")  # 6 steps, a checkpoint every 3
    launched.append(proc := _launch(tmp_path))
    assert _wait(proc, tmp_path) == 0, _log(tmp_path)

    events = events_of(tmp_path)  # seq strictly increasing: one writer
    assert [p["step"] for p in of_type(events, "progress")] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in of_type(events, "metric")] == [1, 2, 3, 4, 5, 6]
    assert [c["step"] for c in of_type(events, "checkpoint")] == [3, 6]
    (tune,) = of_type(events, "tune")
    assert tune["chosen"] == first and [t["outcome"] for t in tune["tried"]] == ["planned"]
    assert "not timed under a distributed launch" in tune["tried"][0]["note"]
    assert (tmp_path / RESULT_FILE).is_file()
    (done,) = [e for e in events if e.type == "done"]
    assert events[-1] is done and done.data["status"] == "succeeded"
    assert done.data["summary"]["processes"] == 2 and done.data["summary"]["steps"] == 6

    per_rank = [m["backend"]["ranks"] for m in of_type(events, "memory")
                if "ranks" in m["backend"]]
    assert per_rank, "no memory event carried every rank's numbers"
    assert [r["rank"] for r in per_rank[-1]] == [0, 1]
    assert all(r["active_bytes"] > 50 << 20 and r["host"] for r in per_rank[-1])  # RSS

    adapter = tmp_path / "adapter"
    assert of_type(events, "artifact") == [{"kind": "adapter", "path": str(adapter)}]
    assert (adapter / "adapter_model.safetensors").is_file()
    checkpoint = tmp_path / "checkpoints" / "checkpoint-6"
    assert damage(checkpoint, TORCH_FILES) is None
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth",
                                                                   "rng_state_1.pth"}
    ranks = read_ranks(tmp_path)
    assert [(r.rank, r.world_size, r.status) for r in ranks] == [(0, 2, "succeeded"),
                                                                  (1, 2, "succeeded")]
    assert len({r.pid for r in ranks}) == 2
    _no_rank_left(tmp_path)


def test_sigterm_stops_both_at_one_step_and_one_process_resumes(tmp_path, demo, launched):
    _two_process_config(tmp_path, demo, **LONG)
    launched.append(proc := _launch(tmp_path))
    wait_for_event(tmp_path, lambda e: e.type == "progress" and e.data["step"] >= 2,
                   timeout=180)
    os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both ranks, as a terminal's ^C
    _wait(proc, tmp_path)  # torchrun itself exits 1 on a signal (SignalException)

    events = events_of(tmp_path)
    done = events[-1]
    assert done.type == "done" and done.data["status"] == "cancelled", _log(tmp_path)
    (checkpoint,) = of_type(events, "checkpoint")
    step = checkpoint["step"]
    folder = Path(checkpoint["path"])
    assert folder.name == f"checkpoint-{step}" and damage(folder, TORCH_FILES) is None
    assert (folder / "rng_state_1.pth").is_file()
    assert done.data["summary"]["steps"] == step
    assert [r.status for r in read_ranks(tmp_path)] == ["cancelled", "cancelled"]
    _no_rank_left(tmp_path)

    # Resume the checkpoint of two processes with one, plain `python -m workers.torch`.
    write_config(tmp_path, demo, params=TORCH_KTO.validate({**FAST, "max_steps": step + 2}),
                 resume_from_checkpoint=str(folder))
    rc, events = run_one_process(tmp_path, timeout=180)
    assert rc == 0, _log(tmp_path)
    resumed = events[done.seq:]
    assert [p["step"] for p in of_type(resumed, "progress")] == [step + 1, step + 2]
    assert resumed[-1].data["status"] == "succeeded"
    assert resumed[-1].data["summary"]["processes"] == 1
    assert resumed[-1].data["summary"]["steps"] == step + 2


def test_a_killed_rank_fails_the_run_and_rank_zero_names_it(tmp_path, demo, launched):
    _two_process_config(tmp_path, demo, **LONG)
    launched.append(proc := _launch(tmp_path))
    wait_for_event(tmp_path, lambda e: e.type == "progress" and e.data["step"] >= 2,
                   timeout=180)
    one = next(r for r in read_ranks(tmp_path) if r.rank == 1)
    os.kill(one.pid, signal.SIGKILL)
    assert _wait(proc, tmp_path) != 0

    events = events_of(tmp_path)
    assert events[-1].type == "done" and events[-1].data["status"] == "failed", _log(tmp_path)
    (error,) = of_type(events, "error")
    assert error["error_type"] == "rank_died" and error["rank"] == 1, error
    assert "rank 1 of 2" in error["message"] and error["hint"]
    statuses = {r.rank: r.status for r in read_ranks(tmp_path)}
    assert statuses == {0: "failed", 1: None}  # rank 1 never wrote its end
    _no_rank_left(tmp_path)
