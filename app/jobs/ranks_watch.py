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
  in worker.log. That block also settles which of several ranks that died without a word
  died first (NCCL: rank 1 OOM-killed, then torchrun SIGKILLs rank 0 stuck in a collective).
- Neither the blame nor the leftover kill ever raises: the supervisor has already let go of
  the worker's process when it calls them, so a raise would repeat at every pass and leave
  the job running forever. What a worker's exit code says (any job) is here too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

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
    try:
        leftovers = local_rank_processes(job.run_dir) if job.run_dir else []
    except Exception:  # never raises (module docstring)
        log.exception("job %s: its rank files could not be read to kill leftovers", job.id)
        leftovers = []
    for info in leftovers:
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


SIGKILL_HINT = ("SIGKILL with no error often means the system ran out of memory: lower the "
                "batch size (per_device_train_batch_size, batch_size) or max_length, or turn "
                "on gradient checkpointing, then resume the job.")


def signal_name(number: int) -> str:
    """SIGKILL for 9; the bare number for one Python has no name for (real-time ones)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def exit_explained(exit_code: int | None) -> tuple[str, str | None]:
    """(error, hint) for a worker that ended without finishing, from its exit code alone."""
    if exit_code is not None and exit_code < 0:
        name = signal_name(-exit_code)
        return (f"the worker was killed by {name} before it finished",
                SIGKILL_HINT if name == "SIGKILL" else None)
    return (f"the worker exited with code {exit_code} without finishing; see the end of its "
            "log", None)


def root_cause_error(cause: dict[str, str]) -> dict[str, str]:
    """The job's error fields from torchrun's root cause."""
    code = int(cause["exitcode"])
    pid = f" (pid {cause['pid']})" if cause["pid"] else ""
    if code < 0:
        name = signal_name(-code)
        how = f"was killed by {name}"
        hint = SIGKILL_HINT if name == "SIGKILL" else \
            "Look at the end of worker.log for what stopped it, then resume the job."
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
    rank killed as a leftover would look like one that died by itself). Never raises; a
    single-process job has no ranks to blame."""
    if not job.run_dir or not distributed(job):
        return False
    try:
        fields = _failure_fields(job.run_dir)
    except Exception:
        log.exception("job %s: its rank files and log could not say which rank failed", job.id)
        return False
    if fields is None:
        return False
    job.error_type = fields["error_type"]
    job.error = fields["message"]
    job.hint = fields.get("hint")
    return True


def _failure_fields(run_dir: str) -> dict[str, Any] | None:
    ranks = read_ranks(Path(run_dir))
    culprit = first_failure(ranks, alive=rank_alive)
    # Several dead without a word: the lowest rank is a guess, torchrun saw which went first
    # (believed when it names one of them: worker.log also holds earlier runs' summaries).
    silent = {str(r.rank) for r in ranks if r.status is None and not rank_alive(r)}
    several_silent = culprit is not None and culprit.status is None and len(silent) > 1
    if culprit is None or several_silent:
        cause = root_cause(_read_log_tail(run_dir))
        if cause is not None and (culprit is None or cause["rank"] in silent):
            return root_cause_error(cause)
    return failure_event(culprit) if culprit is not None else None


def settle_ranks(job: Job, blame: bool) -> bool:
    """Once a job's worker is gone, for a distributed job: blame the rank that failed first
    (when ``blame``), then kill the leftover ranks of this machine (after the blame: a rank
    killed here did not die by itself). Whether a rank was blamed; never raises."""
    if not distributed(job):
        return False
    blamed = blame and explain_failure(job)
    kill_leftover_ranks(job)
    return blamed
