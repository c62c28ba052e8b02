"""The supervisor's side of a job that runs as several processes (workers/launch.py, the
wrapper, is the job's PID; each rank leaves ranks/<r>.json with its own PID).

- Signals: a cancel (SIGTERM) goes to the wrapper alone, which passes it on as its launcher
  needs (a group signal would kill mlx.launch and its ssh clients at once, and torchrun's
  ranks run in sessions of their own anyway). SIGKILL goes to the wrapper's group and to every
  rank process of this machine.
- Leftovers: once the wrapper is gone no rank of this machine may run on (holding memory and
  a GPU): each one still alive is killed.
- Why it failed, when no ``done`` came: the rank that failed first from the rank files
  (contract.ranks.first_failure), else torchrun's "Root Cause (first observed failure)" block
  in worker.log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
from pathlib import Path

from app.jobs.worker_proc import same_process
from app.models import Job
from contract.events import LOG_FILE
from contract.launch_plan import is_distributed
from contract.ranks import RankInfo, failure_event, first_failure, read_ranks

log = logging.getLogger("prospect.supervisor")
LOG_TAIL_BYTES = 256 * 1024  # torchrun prints its summary last
ROOT_CAUSE = "Root Cause (first observed failure):"


def distributed(job: Job) -> bool:
    return is_distributed(job.backend, job.params or {})


def _here(info: RankInfo) -> bool:
    return info.host == socket.gethostname()


def rank_alive(info: RankInfo) -> bool:
    """Whether the rank's process still runs; one on another host cannot be seen from here,
    so it counts as alive (it does not take the blame for dying without a word)."""
    return not _here(info) or same_process(info.pid, info.started_at)


def local_rank_processes(run_dir: str | Path) -> list[RankInfo]:
    """The ranks of this machine whose processes still run (by PID and start time)."""
    return [r for r in read_ranks(Path(run_dir)) if _here(r)
            and same_process(r.pid, r.started_at)]


def signal_job(job: Job, sig: signal.Signals) -> None:
    """Send ``sig`` to the job's worker: its process group, as always, for a single process;
    for several, SIGTERM to the wrapper alone and SIGKILL to its group and every local rank."""
    if not job.pid:
        return
    several = distributed(job)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if several and sig != signal.SIGKILL:
            os.kill(job.pid, sig)
        else:
            os.killpg(job.pid, sig)
    if several and sig == signal.SIGKILL and job.run_dir:
        kill_leftover_ranks(job)


def kill_leftover_ranks(job: Job) -> list[int]:
    """SIGKILL every rank process of this machine still running; returns their PIDs."""
    killed = []
    for info in local_rank_processes(job.run_dir) if job.run_dir else []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(info.pid, signal.SIGKILL)
            killed.append(info.pid)
    if killed:
        log.warning("job %s: killed rank processes left running: %s", job.id, killed)
    return killed


def root_cause(log_text: str) -> dict[str, str] | None:
    """torchrun's root cause from its failure summary: {rank, exitcode, pid?, traceback}."""
    at = log_text.rfind(ROOT_CAUSE)
    if at < 0:
        return None
    block = log_text[at + len(ROOT_CAUSE):]
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", block, re.MULTILINE)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)(?:\s*\(pid:\s*(\d+)\))?", block, re.MULTILINE)
    if rank is None or code is None:
        return None
    trace = re.search(r"^\s*traceback\s*:\s*(.*)$", block, re.MULTILINE)
    return {"rank": rank.group(1), "exitcode": code.group(1), "pid": code.group(2) or "",
            "traceback": trace.group(1).strip() if trace else ""}


def _read_log_tail(run_dir: str) -> str:
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def root_cause_error(cause: dict[str, str]) -> dict[str, str]:
    """The job's error fields from torchrun's root cause."""
    code = int(cause["exitcode"])
    pid = f" (pid {cause['pid']})" if cause["pid"] else ""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        how = f"was killed by {name}"
        hint = ("SIGKILL with no error often means the system ran out of memory: lower "
                "per_device_train_batch_size or max_length, or turn on gradient_checkpointing, "
                "then resume the job." if name == "SIGKILL" else
                "Look at the end of worker.log for what stopped it, then resume the job.")
    else:
        how = f"exited with code {code}"
        hint = "worker.log has that rank's traceback; fix the cause and resume the job."
    # A signal's traceback line repeats the signal; an exit code's only points at torch's
    # docs on enabling tracebacks: neither says more than the line above.
    trace = cause["traceback"]
    said = f": {trace}" if trace and trace != "<N/A>" and \
        not trace.startswith(("Signal", "To enable traceback")) else ""
    return {"error_type": "rank_died" if code < 0 else "rank_failed",
            "message": f"rank {cause['rank']}{pid} {how} first (torchrun's root cause){said}",
            "hint": hint}


def explain_failure(job: Job) -> bool:
    """Set the job's error fields to the rank that failed first, when the rank files or
    torchrun's summary say which; whether they did. Call it before kill_leftover_ranks (a
    rank killed as a leftover would look like one that died by itself)."""
    if not job.run_dir:
        return False
    culprit = first_failure(read_ranks(Path(job.run_dir)), alive=rank_alive)
    if culprit is not None:
        fields = failure_event(culprit)
    else:
        cause = root_cause(_read_log_tail(job.run_dir))
        if cause is None:
            return False
        fields = root_cause_error(cause)
    job.error_type = fields["error_type"]
    job.error = fields["message"]
    job.hint = fields.get("hint")
    return True
