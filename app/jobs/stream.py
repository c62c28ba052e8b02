"""What a client reads of a job while it runs, and after: its stored events past a seq (the
SSE stream, GET /api/jobs/{id}/events) and byte ranges of its worker.log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.models import Event, Job
from contract.events import LOG_FILE

EventRow = tuple[int, str, dict[str, Any]]  # (seq, type, the event as the worker wrote it)


def events_after(engine: Engine, job_id: int, after: int,
                 limit: int = 500) -> tuple[list[EventRow], bool]:
    """The next events past seq ``after`` and whether the stream is over: the job is gone,
    or final with its worker exited (so nothing more will be ingested)."""
    with Session(engine) as session:  # its own session: the stream outlives the request's
        job = session.get(Job, job_id)
        rows = session.exec(select(Event).where(Event.job_id == job_id, Event.seq > after)
                            .order_by(Event.seq).limit(limit)).all()
        finished = job is None or (job.status.is_final and job.pid is None)
        return [(e.seq, e.type, {"seq": e.seq, "t": e.t, "type": e.type, **e.data})
                for e in rows], finished


def read_log(job: Job, offset: int, limit: int) -> dict[str, Any]:
    """Bytes of worker.log from ``offset``; a negative offset counts from the end."""
    path = Path(job.run_dir) / LOG_FILE if job.run_dir else None  # None: never launched
    size = path.stat().st_size if path and path.is_file() else 0
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    data = b""
    if size:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(limit)
    return {"offset": start, "next_offset": start + len(data), "size": size,
            "text": data.decode("utf-8", errors="replace")}
