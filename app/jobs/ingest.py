"""Reads a worker's events.jsonl into the database, idempotently on (job, seq).

The byte offset and the last seq are stored on the job in the same transaction as the rows,
so a re-read after a crash or restart adds nothing twice and loses nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from app.jobs.hub_download import register as register_downloaded
from app.jobs.lifecycle import cas_status
from app.jobs.tuning import apply_tune
from app.models import Event, Job, JobStatus, Metric, ModelEntry
from contract.events import EVENTS_FILE, LOG_FILE, read_events
from contract.events import Event as ProtocolEvent

log = logging.getLogger("prospect.ingest")


def ingest(session: Session, job: Job) -> list[ProtocolEvent]:
    """Ingest the events written since the last call; return the new ones (committed).

    Never raises on what a file holds: a line that breaks the protocol is skipped and logged
    (parse_event checks every field), and should the database still refuse a batch, its
    events are stored one by one, skipping the one refused. Either way the offset advances,
    so one bad line never stops this job, the supervisor or the server's start.
    """
    if not job.run_dir:
        return []
    parsed, offset = read_events(Path(job.run_dir) / EVENTS_FILE, job.events_offset)
    if offset == job.events_offset:
        return []
    new: list[ProtocolEvent] = []
    for item in parsed:
        if not isinstance(item, ProtocolEvent):
            log.warning("job %s: skipped a bad event line: %s", job.id, item)
            continue
        if item.seq <= job.last_seq:
            continue  # already ingested (a file re-read from an older offset)
        new.append(item)
    job_id = job.id
    try:
        return _store(session, job, new, offset)
    except Exception:
        session.rollback()
        log.exception("job %s: storing %d events failed; storing them one at a time",
                      job_id, len(new))
    stored: list[ProtocolEvent] = []
    for ev in new:
        try:
            stored += _store(session, job, [ev], None)
        except Exception:
            session.rollback()
            log.exception("job %s: skipped event %s, which could not be stored", job_id, ev.seq)
    job.events_offset = offset
    session.add(job)
    session.commit()
    return stored


def _store(session: Session, job: Job, new: list[ProtocolEvent],
           offset: int | None) -> list[ProtocolEvent]:
    """Fold ``new`` into the job and store it in one transaction; ``offset`` too, if given."""
    before = job.status
    events, metrics = [], []
    for ev in new:
        events.append({"job_id": job.id, "seq": ev.seq, "t": ev.t, "type": ev.type,
                       "data": ev.data})
        if ev.type == "metric":
            metrics.extend({"job_id": job.id, "seq": ev.seq, "step": ev.data["step"],
                            "name": k, "value": v} for k, v in ev.data["values"].items())
        apply_event(job, ev)
        if ev.type == "artifact" and ev.data.get("kind") == "fused_model":
            register_fused(session, job, str(ev.data["path"]))
        elif ev.type == "artifact" and job.method == "download" \
                and ev.data.get("kind") == "model":  # a hub model, in the cache now
            register_downloaded(session, job.model, Path(str(ev.data["path"])))
        elif ev.type == "artifact" and ev.data.get("kind") == "model" \
                and job.method == "convert":
            register_converted(session, job, str(ev.data["path"]))
    # One executemany per table with a cached statement: a fast MLX step writes ~100 events
    # a second, and a statement per event cost the server 0.57 ms of CPU each (now 0.1 ms;
    # the numbers are in the README's reliability table).
    conn = session.connection()
    for table, rows in ((Event.__table__, events), (Metric.__table__, metrics)):
        if rows:
            conn.execute(insert(table).on_conflict_do_nothing(), rows)
    if offset is not None:
        job.events_offset = offset
    after = job.status
    if after != before:
        # The status moves by compare-and-set, like every transition (app/jobs/lifecycle.py): a
        # plain ORM write would undo whatever another writer did to the row meanwhile.
        set_committed_value(job, "status", before)
        session.add(job)
        session.flush()
        if not cas_status(session, job.id, before, after):
            session.rollback()
            log.warning("job %s: changed by another writer; its events are read again next "
                        "pass", job.id)
            return []
        set_committed_value(job, "status", after)
    session.add(job)
    session.commit()
    session.refresh(job)
    return new


def register_fused(session: Session, job: Job, path: str) -> None:
    """A fused model becomes a base model for new jobs: under the name the fuse was given."""
    model_id = (job.params or {}).get("name") or f"fused-{job.id}"
    session.merge(ModelEntry(id=model_id, path=path, source="fused"))
    log.info("job %s: registered the fused model %s at %s", job.id, model_id, path)


def register_converted(session: Session, job: Job, path: str) -> None:
    """A model converted for MLX (workers/mlx/convert.py) is a base model for new MLX jobs,
    under the name the job was given; its bits and size are read from its folder
    (app/hub/folders.py describe_entry)."""
    model_id = (job.params or {}).get("name") or f"converted-{job.id}"
    session.merge(ModelEntry(id=model_id, path=path, source="converted"))
    log.info("job %s: registered the converted model %s at %s", job.id, model_id, path)


def apply_event(job: Job, ev: ProtocolEvent) -> None:
    """Fold one event (checked by parse_event) into the job's summary fields."""
    d = ev.data
    job.last_seq = max(job.last_seq, ev.seq)
    if ev.type == "done" and job.status.is_final:
        log.warning("job %s: ignored a done event (seq %s): the job is already %s", job.id,
                    ev.seq, job.status.value)
        return
    if job.status == JobStatus.starting:
        job.status = JobStatus.running
    if ev.type == "status":
        job.phase = d.get("phase")
    elif ev.type == "progress":
        job.step = d["step"]
        job.total_steps = d.get("total_steps")
        job.epoch = d.get("epoch")
        job.tokens_per_s = d.get("tokens_per_s")
        job.eta_s = d.get("eta_s")
    elif ev.type == "metric":
        job.step = max(job.step, d["step"])
    elif ev.type == "checkpoint":
        job.last_checkpoint = d.get("path")
    elif ev.type == "tune":  # auto-tuning's choice: into params and job.tuning
        apply_tune(job, d)
    elif ev.type == "artifact" and d.get("kind") == "adapter":
        job.adapter_path = d.get("path")
    elif ev.type == "error":
        job.error_type = d.get("error_type")
        job.error = d.get("message")
        job.hint = d.get("hint")
    elif ev.type == "done":
        job.status = JobStatus(d["status"])
        job.summary = d.get("summary") or {}
        # The worker's clock and the server's are one, but t is rounded: never before start.
        finished = datetime.fromtimestamp(ev.t, UTC)
        started = job.started_at and job.started_at.replace(tzinfo=UTC)
        job.finished_at = max(finished, started) if started else finished
        job.phase = "done"
        if job.status == JobStatus.succeeded:
            job.eta_s = 0.0


def log_tail(run_dir: str, lines: int = 40, max_chars: int = 4000) -> str:
    """The end of worker.log, for a failed job's error report."""
    path = Path(run_dir) / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:  # gone, or not a file any more: no tail to show
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return tail[-max_chars:]
