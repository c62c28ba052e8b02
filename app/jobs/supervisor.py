"""The supervisor alone starts and stops workers.

One asyncio task: every poll interval it ingests new events of active jobs, notices workers
that ended (or were killed) without a `done` event, stops hung ones, enforces the cancel grace
period, and starts queued jobs in FIFO order while a slot is free. Every transition is one log
line. Workers outlive the server: after a restart `recover()` finds them again by PID and
start time, and the events they wrote meanwhile are ingested from the stored byte offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.config import Settings
from app.jobs.ingest import ingest, log_tail
from app.jobs.lifecycle import HANG_HINT, JobGone, queued_jobs, set_status
from app.jobs.ranks_watch import exit_explained, explain_failure, settle_ranks, signal_job
from app.jobs.worker_proc import RUN_FOLDER_HINT, run_folder_lost, same_process, start_worker
from app.models import Job, JobStatus, utcnow
from contract.events import EVENTS_FILE
from contract.knob_core import ParamError

log = logging.getLogger("prospect.supervisor")


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class Supervisor:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.procs: dict[int, subprocess.Popen] = {}
        self.changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        # Workers found again after a restart: not our children, so no exit code.
        self.adopted: set[int] = set()
        # Hung workers sent SIGTERM: job id -> monotonic time of the signal.
        self._hung_since: dict[int, float] = {}
        # Job id -> wall time of its last event other than a memory report.
        self._progress_at: dict[int, float] = {}
        # Jobs whose events could not be read at the last try (logged once, not each pass).
        self._unreadable: set[int] = set()
        # Workers sent SIGTERM for a cancel (by the API or by a pass of this loop).
        self._term_sent: set[int] = set()
        # Silence is not counted across a sleep of the machine (or a paused server): both the
        # worker and the server were frozen, and the wall clock jumped on waking.
        self._awake_since = self._last_tick = time.time()
        # Called with a job about to start (the inference manager unloads models for it).
        self.make_room: Callable[[Job], None] | None = None

    # --- the loop -------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.recover)
        self._task = asyncio.create_task(self._run(), name="prospect-supervisor")

    async def stop(self) -> None:
        """Stop watching; workers keep running and are found again at the next start."""
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                changed = await asyncio.to_thread(self.tick)
            except Exception:  # keep supervising whatever one tick hit
                log.exception("supervisor tick failed")
                changed = False
            if changed:
                await self.notify()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            self._wake.clear()

    def wake(self) -> None:
        """Run the next pass now (a job was queued), not at the next poll."""
        self._wake.set()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for_change(self, timeout: float) -> bool:
        """Wait until a pass ingests something; False when ``timeout`` passed first."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
                return True
            except TimeoutError:
                return False

    def tick(self) -> bool:
        """One pass; returns whether anything changed (so SSE listeners wake up)."""
        self.note_clock(time.time())
        changed = False
        with Session(self.engine) as session:
            # A job whose worker wrote `done` is final but its process may still be exiting:
            # it holds its slot (and its memory) until the process is gone.
            watched = session.exec(select(Job).where(
                Job.status.in_([JobStatus.starting, JobStatus.running]) | Job.pid.is_not(None)
            )).all()
            n_active = 0
            for job in watched:
                # One job's trouble (a row deleted under it, a file it cannot read) is logged
                # and that job skipped this pass: it never stops the loop or the other jobs.
                job_id = job.id  # readable even once the row is gone
                try:
                    changed |= self._watch(session, job)
                    n_active += job.status.is_active or job.pid is not None
                except Exception:
                    log.exception("job %s: skipped this pass after an unexpected error", job_id)
                    session.rollback()
                    # Its slot is held while its worker may be alive, not forever.
                    proc = self.procs.get(job_id)
                    n_active += (proc is not None and proc.poll() is None) or \
                        job_id in self.adopted
            for job in queued_jobs(session):
                if n_active >= self.settings.max_concurrent_jobs:
                    break
                if not job.run_dir:  # create_job commits twice: no folder yet, next pass
                    break
                job_id = job.id
                try:
                    if self.make_room is not None:
                        self.make_room(job)
                    n_active += self._launch(session, job)
                except Exception:
                    log.exception("job %s: not started after an unexpected error", job_id)
                    session.rollback()
                changed = True
        return changed

    # --- one active job -------------------------------------------------------------------
    def _ingest(self, session: Session, job: Job) -> list:
        """ingest(), and should reading fail (an events file that cannot be read), say so
        once and go on: the job's process is still watched, so it still ends."""
        job_id = job.id
        try:
            new = ingest(session, job)
        except Exception:
            if job_id not in self._unreadable:
                log.exception("job %s: its events could not be read", job_id)
            self._unreadable.add(job_id)
            session.rollback()
            return []
        self._unreadable.discard(job_id)
        return new

    def _watch(self, session: Session, job: Job) -> bool:
        job_id = job.id  # for the log, should the row go
        new = self._ingest(session, job)
        if any(ev.type != "memory" for ev in new) or job.id not in self._progress_at:
            self._progress_at[job.id] = time.time()  # since this server watches it
        changed = bool(new)
        alive, exit_code = self._poll(job)
        if alive:
            if job.cancel_requested_at is not None:
                self._enforce_cancel(job)
            elif not job.status.is_final:
                changed |= self._check_hung(session, job)
            return changed
        self._ingest(session, job)  # the last lines written before it exited
        self.procs.pop(job_id, None)
        adopted = job_id in self.adopted
        self.adopted.discard(job_id)
        self._hung_since.pop(job_id, None)
        self._progress_at.pop(job_id, None)
        self._term_sent.discard(job_id)
        self._unreadable.discard(job_id)
        job.exit_code = exit_code
        ended = None
        if not job.status.is_final:
            ended = self._ended_without_done(job, exit_code, adopted)
        settle_ranks(job, blame=False)  # leftover ranks; never raises (ranks_watch.py)
        if job.status in (JobStatus.failed, JobStatus.interrupted) and not job.log_tail:
            job.log_tail = log_tail(job.run_dir)  # the worker said why; the log says more
        job.pid = None
        job.finished_at = job.finished_at or utcnow()
        if ended is None:
            session.add(job)
            session.commit()
        elif not set_status(session, job, ended):
            log.warning("job %s: became %s meanwhile; left so", job_id, job.status.value)
        log.info("job %s: worker exited (code %s), job is %s", job_id, exit_code,
                 job.status.value)
        return True

    def _ended_without_done(self, job: Job, exit_code: int | None,
                            adopted: bool) -> JobStatus:
        """Why a worker ended without a done event; returns the status it leaves the job in
        (the caller moves it there by compare-and-set)."""
        tail = log_tail(job.run_dir)
        job.log_tail = tail
        if job.cancel_requested_at is not None:
            if exit_code == -signal.SIGKILL:
                job.error = job.error or "the worker did not stop by itself after the " \
                                         "cancel and was killed"
            return JobStatus.cancelled
        if job.error_type != "Hung" and explain_failure(job):
            return JobStatus.failed  # the rank that failed first, from ranks/ or torchrun
        if job.error_type == "Hung" or adopted:
            # A hung worker we stopped, or one started by an earlier server (not our child,
            # so its exit code is unknown): either way it ended without saying done.
            if job.error_type != "Hung":
                job.error_type = "Interrupted"
                job.error = "the worker ended without a done event while this server " \
                            "watched it after a restart (its exit code is unknown)"
                job.hint = "resume the job from its last checkpoint; see the end of its log"
            return JobStatus.interrupted
        if run_folder_lost(job):
            job.error_type = "RunFolderRemoved"
            job.error = f"the run folder {job.run_dir} was removed (or replaced) while the " \
                        f"job ran, so its events and results were lost (worker exit code " \
                        f"{exit_code})"
            job.hint = RUN_FOLDER_HINT
            return JobStatus.failed
        job.error_type = job.error_type or "WorkerExited"
        error, hint = exit_explained(exit_code)
        job.error, job.hint = job.error or error, job.hint or hint
        return JobStatus.failed

    def _poll(self, job: Job) -> tuple[bool, int | None]:
        proc = self.procs.get(job.id)
        if proc is not None:
            code = proc.poll()
            return code is None, code
        return self._adopted_alive(job), None

    def _adopted_alive(self, job: Job) -> bool:
        """A worker started by an earlier server: the same PID *and* start time."""
        return same_process(job.pid, job.pid_started_at)

    def _check_hung(self, session: Session, job: Job) -> bool:
        """No event for hang_timeout_s, or in training no finished step for stall_timeout_s:
        SIGTERM, then SIGKILL after the cancel grace.

        Silence is measured from the events file's mtime (or the start), so it survives a
        server restart; workers write a memory event every few seconds while alive.
        """
        sent = self._hung_since.get(job.id)
        if sent is not None:
            if time.monotonic() - sent > self.settings.cancel_grace_s:
                self._signal(job, signal.SIGKILL)
            return False
        now = time.time()
        silent = now - self._last_activity(job)
        # The memory thread goes on reporting while a training loop is stuck (a deadlocked
        # collective, a data loader that never returns): in training, no finished step for
        # stall_timeout_s is a hang too. Loading and precomputing have no steps to count.
        stalled = now - max(self._progress_at.get(job.id, now), self._awake_since)
        if silent > self.settings.hang_timeout_s:
            job.error = f"the worker wrote no event for {silent:.0f} s (at step {job.step})"
        elif job.phase == "training" and stalled > self.settings.stall_timeout_s:
            job.error = f"the worker finished no training step for {stalled:.0f} s (at step " \
                        f"{job.step}) though its process was still alive"
        else:
            return False
        job.error += "; it was stopped"
        job.error_type = "Hung"
        job.hint = HANG_HINT
        session.add(job)
        session.commit()
        log.warning("job %s: hung (%s), sending SIGTERM", job.id, job.error)
        self._hung_since[job.id] = time.monotonic()
        self._signal(job, signal.SIGTERM)
        return True

    def _last_activity(self, job: Job) -> float:
        started = _aware(job.started_at).timestamp() if job.started_at else time.time()
        started = max(started, self._awake_since)
        try:
            return max(started, (Path(job.run_dir) / EVENTS_FILE).stat().st_mtime)
        except OSError:
            return started

    def note_clock(self, now: float) -> None:
        """A long gap between passes means the machine slept: count silence from now."""
        if now - self._last_tick > max(30.0, 20 * self.settings.poll_interval_s):
            log.info("no pass for %.0fs (the machine slept?); hang timers restart",
                     now - self._last_tick)
            self._awake_since = now
        self._last_tick = now

    def _enforce_cancel(self, job: Job) -> None:
        """SIGTERM once (the API sends it with the cancel, but a cancel that came while the
        worker was being started found no PID to signal); past the grace period, SIGKILL."""
        if job.id not in self._term_sent:
            self._term_sent.add(job.id)
            self._signal(job, signal.SIGTERM)
        waited = (utcnow() - _aware(job.cancel_requested_at)).total_seconds()
        if waited > self.settings.cancel_grace_s:
            self._signal(job, signal.SIGKILL)

    def _signal(self, job: Job, sig: signal.Signals) -> None:
        if not job.pid:
            return
        signal_job(job, sig)  # several processes: app/jobs/ranks_watch.py
        if sig == signal.SIGKILL:
            log.warning("job %s: no exit %.0fs after SIGTERM, sent SIGKILL", job.id,
                        self.settings.cancel_grace_s)

    # --- starting a worker ----------------------------------------------------------------
    def _launch(self, session: Session, job: Job) -> bool:
        """Claim the job (queued -> starting, compare-and-set), then start its worker.
        Returns whether a worker now holds a slot."""
        job_id = job.id
        try:
            claimed = set_status(session, job, JobStatus.starting, phase="starting")
        except JobGone:
            log.info("job %s: deleted before it started", job_id)
            return False
        if not claimed:  # a cancel or a delete won, or another supervisor claimed it
            log.info("job %s: not started: it became %s meanwhile", job_id, job.status.value)
            return False
        try:
            proc, resume = start_worker(job, self.settings)
        except (OSError, ParamError) as exc:  # ParamError: the Hosts setting changed
            set_status(session, job, JobStatus.failed, error_type="WorkerStartFailed",
                       error=f"could not start the worker: {exc}", finished_at=utcnow())
            log.error("job %s: could not start its worker (%s)", job_id, exc)
            return False
        self.procs[job.id] = proc
        job.pid = proc.pid
        try:
            job.pid_started_at = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            job.pid_started_at = None
        job.started_at = utcnow()
        session.add(job)
        session.commit()  # and re-read: a cancel may have come since the claim
        log.info("job %s: worker started (pid %s%s)", job_id, proc.pid,
                 f", resuming from {resume}" if resume else "")
        if job.cancel_requested_at is not None:  # it found no PID to signal: signal now
            self._enforce_cancel(job)
        return True

    # --- after a restart ------------------------------------------------------------------
    def recover(self) -> None:
        """Find workers an earlier server started; ingest what they wrote meanwhile."""
        with Session(self.engine) as session:
            watched = session.exec(select(Job).where(
                Job.status.in_([JobStatus.starting, JobStatus.running]) | Job.pid.is_not(None)
            )).all()
            for job in watched:
                job_id = job.id
                try:  # one job's trouble must not stop the server's start
                    self._recover_one(session, job)
                except Exception:
                    log.exception("job %s: not recovered after an unexpected error", job_id)
                    session.rollback()

    def _recover_one(self, session: Session, job: Job) -> None:
        self._ingest(session, job)
        if self._adopted_alive(job):
            log.info("job %s: found its worker again (pid %s)", job.id, job.pid)
            self.adopted.add(job.id)
            return
        job.pid = None
        blamed = settle_ranks(job, blame=not job.status.is_final)  # never raises
        if job.status.is_final:
            session.add(job)
            session.commit()
            return
        job.log_tail = log_tail(job.run_dir)
        if not blamed:
            job.error_type = "Interrupted"
            job.error = "the worker was gone when the server started, without a done event"
            job.hint = "resume the job from its last checkpoint"
        job.finished_at = utcnow()
        set_status(session, job, JobStatus.failed if blamed else JobStatus.interrupted)

    def cancel_now(self, job: Job) -> None:
        """Send SIGTERM right away (the API's cancel), so the worker starts saving. Without
        a PID yet (the launch is between its claim and the start) the supervisor sends it
        once it has one."""
        if job.pid:
            self._term_sent.add(job.id)
            self._signal(job, signal.SIGTERM)
