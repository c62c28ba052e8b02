"""app/jobs/ranks_watch.py with real processes and torchrun's own failure summary: which
rank is blamed, which processes a signal reaches, and which leftovers are killed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from app.jobs.ranks_watch import (
    explain_failure,
    kill_leftover_ranks,
    root_cause,
    root_cause_error,
    signal_job,
)
from app.models import Job
from contract.ranks import write_rank_end


def torchrun_summary(root_rank: int, code: int) -> str:
    """The summary torchrun prints when its workers fail, through torch's own formatter."""
    failures = {root_rank: ProcessFailure(local_rank=root_rank, pid=4242, exitcode=code,
                                          error_file="<N/A>")}
    failures[1 - root_rank] = ProcessFailure(local_rank=1 - root_rank, pid=4243, exitcode=1,
                                             error_file="<N/A>")
    # torch takes the earliest failure as the root cause: the other one fails a moment later.
    failures[1 - root_rank].timestamp = failures[root_rank].timestamp + 5
    return "some output\n" + ChildFailedError("workers.torch", failures).format_msg()


def job_in(run_dir: Path, pid: int | None = None) -> Job:
    return Job(id=7, name="d", backend="torch", method="kto", model="m", dataset="d",
               params={"num_processes": 2}, run_dir=str(run_dir), pid=pid)


def started(cmd: list[str], **kw) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen(cmd, **kw)
    return proc, psutil.Process(proc.pid).create_time()


def write_start(run_dir: Path, rank: int, pid: int, at: float, host: str | None = None):
    folder = run_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": 2, "local_rank": rank, "host": host or socket.gethostname(),
        "pid": pid, "started_at": at}))


def test_root_cause_of_a_killed_rank():
    cause = root_cause(torchrun_summary(1, -9))
    assert cause == {"rank": "1", "exitcode": "-9", "pid": "4242",
                     "traceback": "Signal 9 (SIGKILL) received by PID 4242"}
    error = root_cause_error(cause)
    assert error["error_type"] == "rank_died"
    assert error["message"] == "rank 1 (pid 4242) was killed by SIGKILL first (torchrun's " \
                               "root cause)"
    assert "ran out of memory" in error["hint"]


def test_root_cause_of_a_rank_that_exited():
    error = root_cause_error(root_cause(torchrun_summary(0, 3)))
    assert error["error_type"] == "rank_failed"
    assert error["message"] == "rank 0 (pid 4242) exited with code 3 first (torchrun's root " \
                               "cause)"
    assert root_cause("no summary here") is None


def test_the_rank_files_are_believed_before_the_log(tmp_path):
    dead, at = started([sys.executable, "-c", "pass"])
    dead.wait()
    write_start(tmp_path, 0, psutil.Process().pid, psutil.Process().create_time())
    write_start(tmp_path, 1, dead.pid, at)
    (tmp_path / "worker.log").write_text(torchrun_summary(0, 1))
    job = job_in(tmp_path)
    assert explain_failure(job)
    assert job.error_type == "rank_died"
    assert job.error.startswith(f"rank 1 of 2 (pid {dead.pid} on ")
    # A rank that wrote its own error is named with it.
    write_rank_end(tmp_path, 0, "failed", {"error_type": "OutOfMemory", "message": "boom",
                                           "hint": "smaller batch"})
    assert explain_failure(job)
    assert (job.error_type, job.hint) == ("OutOfMemory", "smaller batch")
    assert job.error.startswith("rank 0 of 2") and job.error.endswith("failed: boom")


def test_the_log_is_read_when_no_rank_file_says(tmp_path):
    job = job_in(tmp_path)
    assert not explain_failure(job)  # no rank files, no log
    (tmp_path / "worker.log").write_text(torchrun_summary(1, -9))
    assert explain_failure(job)
    assert job.error.startswith("rank 1 (pid 4242) was killed by SIGKILL")


def test_leftovers_of_this_machine_are_killed_and_no_one_else(tmp_path):
    local, local_at = started(["sleep", "60"])
    remote, remote_at = started(["sleep", "60"])
    try:
        write_start(tmp_path, 0, local.pid, local_at)
        # A rank on another Mac: its PID means nothing here (here it is someone else's).
        write_start(tmp_path, 1, remote.pid, remote_at, host="other-mac.local")
        assert kill_leftover_ranks(job_in(tmp_path)) == [local.pid]
        assert local.wait(timeout=10) == -signal.SIGKILL
        assert remote.poll() is None
        # A PID taken by another process since (another start time) is left alone.
        write_start(tmp_path, 0, remote.pid, remote_at - 100)
        assert kill_leftover_ranks(job_in(tmp_path)) == []
        assert remote.poll() is None
    finally:
        for proc in (local, remote):
            proc.kill()
            proc.wait()


# The handler is in place before the PID is printed: the test signals as soon as it reads it.
WRAPPER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
child = subprocess.Popen(["sleep", "60"])
print(child.pid, flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("several", [True, False])
def test_sigterm_reaches_the_wrapper_alone_when_several(tmp_path, several):
    wrapper = subprocess.Popen([sys.executable, "-c", WRAPPER], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    child = psutil.Process(int(wrapper.stdout.readline()))
    try:
        job = job_in(tmp_path, pid=wrapper.pid)
        job.params = {"num_processes": 2 if several else 1}
        signal_job(job, signal.SIGTERM)
        assert wrapper.wait(timeout=20) == 0
        if several:  # the child is the wrapper's to stop (it passes the cancel on)
            with pytest.raises(psutil.TimeoutExpired):
                child.wait(timeout=1)
            signal_job(job, signal.SIGKILL)  # the group: the child too
        assert child.wait(timeout=10) in (-signal.SIGTERM, -signal.SIGKILL, None)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if child.is_running():
            child.kill()
