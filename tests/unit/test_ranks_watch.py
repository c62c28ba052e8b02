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
    exit_explained,
    explain_failure,
    kill_leftover_ranks,
    root_cause,
    root_cause_error,
    signal_job,
    signal_name,
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


def dead_process() -> tuple[int, float]:
    """The PID and start time of a real process that has ended (and been reaped)."""
    proc, at = started([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid, at


@pytest.mark.parametrize(("start", "end"), [
    ("null", None), ("[]", None), ('"rank 1"', None),
    (None, "null"), (None, "[]"), (None, '{"status": "failed", "error": "boom", "t": 1}'),
    (None, '{"status": "failed", "error": {"message": "boom"}, "t": "noon"}'),
    ({"pid": -1}, None), ({"pid": "12"}, None), ({"rank": "1"}, None),
    ({"started_at": "yesterday"}, None),
])
def test_malformed_rank_files_never_stop_the_blame(tmp_path, start, end):
    """Each malformed file: explain_failure still answers (a raise would leave the job
    running: the supervisor has already let go of its process) and kills no one."""
    pid, at = dead_process()
    write_start(tmp_path, 0, psutil.Process().pid, psutil.Process().create_time())
    write_start(tmp_path, 1, pid, at)
    rank1 = tmp_path / "ranks" / "1.json"
    if isinstance(start, str):
        rank1.write_text(start)
    elif start:
        rank1.write_text(json.dumps({**json.loads(rank1.read_text()), **start}))
    if end:
        (tmp_path / "ranks" / "1.end.json").write_text(end)
    job = job_in(tmp_path)
    blamed = explain_failure(job)
    if start is None:  # rank 1's start file is whole: it is named, with what it said
        assert blamed and job.error.startswith("rank 1 of 2")
        assert ("boom" in job.error) == ("boom" in end)
    else:  # skipped: no rank of a readable file failed, and no log names one
        assert not blamed and job.error is None


def test_a_real_time_signal_has_no_name_but_its_number():
    assert signal_name(9) == "SIGKILL" and signal_name(40) == "40"
    assert exit_explained(-40) == ("the worker was killed by 40 before it finished", None)
    error, hint = exit_explained(-9)
    assert "SIGKILL" in error and "out of memory" in hint
    assert exit_explained(3)[0].startswith("the worker exited with code 3")
    error = root_cause_error(root_cause(torchrun_summary(1, -40)))
    assert error["message"].startswith("rank 1 (pid 4242) was killed by 40 first")


def test_two_silent_deaths_are_settled_by_torchruns_root_cause(tmp_path):
    """NCCL: rank 1 is OOM-killed, then torchrun SIGKILLs rank 0 stuck in a collective. Both
    died without a word; torchrun saw rank 1 go first (the lowest rank would be wrong)."""
    for rank in (0, 1):
        write_start(tmp_path, rank, *dead_process())
    job = job_in(tmp_path)
    assert explain_failure(job) and job.error.startswith("rank 0 of 2")  # no log: a guess
    (tmp_path / "worker.log").write_text(torchrun_summary(1, -9))
    assert explain_failure(job)
    assert job.error.startswith("rank 1 (pid 4242) was killed by SIGKILL first")
    # A summary naming a rank that did not die silently (an earlier run's) is not believed.
    (tmp_path / "worker.log").write_text(torchrun_summary(1, -9).replace("rank      : 1",
                                                                         "rank      : 5"))
    assert root_cause(_log(tmp_path))["rank"] == "5"
    assert explain_failure(job) and job.error.startswith("rank 0 of 2")
    # One rank with an error of its own is named whatever the log says.
    write_rank_end(tmp_path, 0, "failed", {"error_type": "ValueError", "message": "row 3"})
    (tmp_path / "worker.log").write_text(torchrun_summary(1, -9))
    assert explain_failure(job) and job.error == \
        f"rank 0 of 2 (pid {json.loads((tmp_path / 'ranks/0.json').read_text())['pid']} " \
        f"on {socket.gethostname()}) failed: row 3"


def _log(run_dir: Path) -> str:
    return (run_dir / "worker.log").read_text()


def test_a_distributed_start_clears_the_last_runs_rank_files(tmp_path):
    """start_worker empties ranks/ itself: a wrapper that dies before it does must not leave
    the previous run's files to be blamed. (/bin/true stands for an interpreter whose wrapper
    never ran.)"""
    from app.config import Settings
    from app.jobs.worker_proc import start_worker

    job = job_in(tmp_path / "run")
    write_start(tmp_path / "run", 1, *dead_process())
    proc, _ = start_worker(job, Settings(home=tmp_path, python="/bin/true"))
    assert proc.wait(timeout=30) == 0
    assert not (tmp_path / "run" / "ranks").exists()
    assert not explain_failure(job)


def test_a_blame_that_hits_an_unexpected_error_is_logged_not_raised(tmp_path, caplog):
    job = job_in(tmp_path)
    job.run_dir = f"{tmp_path}/bad\0name"  # open() raises ValueError, not OSError
    assert not explain_failure(job) and job.error is None
    assert kill_leftover_ranks(job) == []
    assert "could not say which rank failed" in caplog.text


@pytest.mark.parametrize("after", ["a pass", "a restart"])
def test_a_distributed_job_with_malformed_rank_files_still_ends(tmp_path, after):
    """The supervisor, once the wrapper is gone, blames from rank files it cannot fully
    read (rank 0's start file is null, rank 1's error a bare string) and the job is final:
    failed, naming rank 1, with its log tail."""
    from sqlmodel import Session

    from app.models import JobStatus
    from tests.helpers.workers import fake_world

    settings, engine, sup = fake_world(tmp_path)
    wrapper, at = started([sys.executable, "-c", "print('the wrapper ends')"],
                          stdout=subprocess.DEVNULL)
    wrapper.wait()
    with Session(engine) as s:
        job = Job(name="d", backend="torch", method="kto", model="m", dataset="d",
                  params={"num_processes": 2}, status=JobStatus.running, pid=wrapper.pid,
                  pid_started_at=at)
        s.add(job)
        s.commit()
        run_dir = settings.runs_dir / f"{job.id:06d}"
        job.run_dir = str(run_dir)
        s.add(job)
        s.commit()
        job_id = job.id
    run_dir.mkdir(parents=True)
    (run_dir / "worker.log").write_text("rank 1 said why\n")
    write_start(run_dir, 1, *dead_process())
    (run_dir / "ranks" / "0.json").write_text("null")
    (run_dir / "ranks" / "1.end.json").write_text('{"status": "failed", "error": "boom", '
                                                  '"t": "noon"}')
    if after == "a pass":
        sup.procs[job_id] = wrapper
        assert sup.tick()
    else:
        sup.recover()
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.failed and job.pid is None
        assert job.error.startswith("rank 1 of 2") and job.error.endswith("failed: boom")
        assert "rank 1 said why" in job.log_tail
