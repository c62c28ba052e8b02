"""Status transitions, each a compare-and-set on the status the writer read.

Two writers change a job: the API (a person's cancel, resume, delete) and the supervisor
(launch, ingest, a worker's end), in different threads and, if someone starts two servers,
in different processes. A read-modify-write of ``status`` lets the later commit silently undo
the earlier one (a cancel answered 200 while the launch it raced went on to run the worker).
So every move is ``UPDATE job SET status=:new … WHERE id=:id AND status=:old``: exactly one
writer wins, and the loser re-reads the row and acts on what really happened.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy import delete, func, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import InvalidRequestError
from sqlmodel import Session, select

from app.config import Settings
from app.errors import JobInputError, JobStateError
from app.models import TRANSITIONS, Job, JobStatus, utcnow

log = logging.getLogger("prospect.jobs")
ACTIVE = (JobStatus.starting, JobStatus.running)
HANG_HINT = ("The worker stopped making progress, so it was stopped. Resume the job from its "
             "last checkpoint; if it hangs again, look at the end of worker.log (a stuck data "
             "loader, a deadlocked device, a machine swapping hard). A step that is simply "
             "slow needs a larger PROSPECT_STALL_TIMEOUT_S (no finished step) or "
             "PROSPECT_HANG_TIMEOUT_S (no event at all).")


class JobGone(JobInputError):
    """The job was deleted while this writer held it."""

    def __init__(self, job_id: int | None):
        super().__init__("id", f"job {job_id} was deleted meanwhile", status_code=404)


def transition(job: Job, to: JobStatus) -> None:
    """Check a move against the lifecycle and make it in memory (a job not yet stored)."""
    if to not in TRANSITIONS[job.status]:
        raise JobStateError(f"job {job.id} is {job.status.value}; it cannot become {to.value}")
    job.status = to


def cas_status(session: Session, job_id: int, old: JobStatus, new: JobStatus, *where,
               **values) -> bool:
    """``UPDATE job SET status=new, **values WHERE id AND status=old AND where`` in the
    session's transaction (not committed); whether the row matched."""
    stmt = (update(Job).where(Job.id == job_id, Job.status == old, *where)
            .values(status=new, **values).execution_options(synchronize_session=False))
    return session.execute(stmt).rowcount == 1


def reload(session: Session, job: Job) -> Job:
    try:
        session.refresh(job)
    except InvalidRequestError:  # ObjectDeletedError: the row is gone
        identity = sa_inspect(job).identity  # job.id itself would try to load the row
        raise JobGone(identity[0] if identity else None) from None
    return job


def set_status(session: Session, job: Job, to: JobStatus, *where, **values) -> bool:
    """Move ``job`` from the status it was read with to ``to``, with ``values`` and the job's
    other pending changes, in one transaction.

    True: this writer won. False: another changed the status first; nothing of this
    writer's is kept and ``job`` holds what the row holds now, to act on. JobGone when the
    row was deleted.
    """
    if sa_inspect(job).attrs.status.history.has_changes():
        raise RuntimeError("set the status through set_status only, never in memory")
    old = job.status
    if to not in TRANSITIONS[old]:
        raise JobStateError(f"job {job.id} is {old.value}; it cannot become {to.value}")
    session.flush()
    won = cas_status(session, job.id, old, to, *where, **values)
    if won:
        session.commit()
        log.info("job %s: %s -> %s", job.id, old.value, to.value)
    else:
        session.rollback()
    reload(session, job)
    return won


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once and its worker never starts; a starting or running
    one is marked (the API sends SIGTERM; the supervisor signals a worker whose PID it
    records after the mark). If the launch wins the race, this re-reads an active job and
    marks it: the cancel is never lost."""
    for _ in range(3):  # queued -> starting is the only move that can overtake a cancel
        if job.status == JobStatus.queued:
            if set_status(session, job, JobStatus.cancelled, finished_at=utcnow()):
                return job
        elif job.status.is_active:
            stmt = (update(Job).where(Job.id == job.id, Job.status.in_(ACTIVE))
                    .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at,
                                                              utcnow()))
                    .execution_options(synchronize_session=False))
            marked = session.execute(stmt).rowcount == 1
            session.commit()
            reload(session, job)
            if marked:
                log.info("job %s: cancel requested", job.id)
                return job
        else:
            raise JobStateError(f"job {job.id} is already {job.status.value}")
    raise JobStateError(f"job {job.id} changed while it was being cancelled; try again")


def check_inputs_exist(job: Job) -> None:
    """What a resumed worker reads must still be there: a 422 naming it, not a failed run."""
    if job.method != "fuse" and job.dataset_path and not _exists(Path(job.dataset_path)):
        raise JobInputError("dataset", f"the dataset of job {job.id} ({job.dataset}) is gone: "
                            f"{job.dataset_path} no longer exists. Register it again at that "
                            "path, or clone the job and pick another dataset")
    if job.model_path.startswith("/") and not _exists(Path(job.model_path) / "config.json"):
        raise JobInputError("model", f"the model of job {job.id} ({job.model}) is gone: "
                            f"{job.model_path} holds no model any more. Put it back, or clone "
                            "the job and pick another model")
    params = job.params or {}
    if job.method == "generate":  # model B and the adapters are folders the worker loads
        for key in ("model_b", "adapter_a", "adapter_b"):
            value = str(params.get(key) or "")
            if value.startswith("/") and not _exists(Path(value)):
                raise JobInputError(f"params.{key}", f"{key} of job {job.id} is gone: {value} "
                                    "no longer exists. Put it back, or start a new arena")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL: not there either way
        return False


def request_resume(session: Session, job: Job, params: dict | None = None) -> Job:
    """Queue a stopped job again; its worker continues from the last checkpoint. ``params``:
    the job's params with other scale knobs, checked by app/jobs/scale_checks.py; stored in
    the same compare-and-set as the move to queued."""
    if job.status not in (JobStatus.cancelled, JobStatus.failed, JobStatus.interrupted):
        raise JobStateError(f"job {job.id} is {job.status.value}; only cancelled, failed or "
                            "interrupted jobs can be resumed")
    if job.pid is not None:
        raise JobStateError(f"job {job.id}'s worker is still exiting; try again in a moment")
    # A generate job needs no checkpoint: its worker skips the answers already written; a
    # download neither: the hub client keeps the files it finished in the cache.
    if job.method not in ("generate", "download") and (not job.last_checkpoint
                                     or not _exists(Path(job.last_checkpoint))):
        raise JobStateError(f"job {job.id} has no checkpoint to resume from; clone it instead")
    check_inputs_exist(job)
    if params is not None and params != job.params:
        job.params = dict(params)
    if not set_status(session, job, JobStatus.queued, Job.pid.is_(None),
                      finished_at=None, cancel_requested_at=None, error=None, error_type=None,
                      hint=None, log_tail=None, exit_code=None, pid=None, pid_started_at=None):
        raise JobStateError(f"job {job.id} changed meanwhile: it is {job.status.value} now")
    return job


def delete_job(session: Session, job: Job, settings: Settings) -> None:
    """Delete a job that has no worker: queued (before the supervisor claims it) or final."""
    if job.status.is_active:
        raise JobStateError(f"job {job.id} is {job.status.value}; cancel it before deleting")
    if job.pid is not None:
        raise JobStateError(f"job {job.id}'s worker is still exiting; try again in a moment")
    job_id, run_dir = job.id, Path(job.run_dir).resolve() if job.run_dir else None
    # A generate job's prompts file, written for it under <home>/prompts, goes with it.
    prompts = Path(job.dataset_path) if job.method == "generate" and job.dataset_path else None
    # Conditional like a transition: a launch that claimed the job first wins, and the
    # person is told it is starting now, instead of the supervisor finding its row gone.
    stmt = delete(Job).where(Job.id == job_id, Job.status.not_in(ACTIVE), Job.pid.is_(None))
    deleted = session.execute(stmt.execution_options(synchronize_session=False)).rowcount
    session.commit()
    if deleted != 1:
        reload(session, job)
        raise JobStateError(f"job {job_id} is {job.status.value} now; cancel it before "
                            "deleting")
    session.expunge(job)
    log.info("job %s: deleted", job_id)
    # Only a folder under runs/ is ever removed, and only by deleting its job.
    if run_dir and run_dir.parent == settings.runs_dir and run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
    if prompts and prompts.parent == settings.home_dir / "prompts":
        prompts.unlink(missing_ok=True)


def queued_jobs(session: Session) -> list[Job]:
    return list(session.exec(select(Job).where(Job.status == JobStatus.queued).order_by(Job.id)))
