"""Time series the job page charts besides metrics: memory samples and training throughput.

Both come from the stored events (app/ingest.py keeps every event in the ``event`` table),
so a finished job's page draws the same charts as a live one, long after its worker is gone.
A day-long run reports memory every 2 s (~43,000 samples) and progress every step: the
answer is downsampled on the server with the same peak-keeping buckets as the metrics, so a
spike in memory is never averaged away.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlmodel import Session, select

from app.db import SessionDep
from app.metrics import downsample
from app.models import Event
from app.routes.api import JobId, get_job

router = APIRouter(prefix="/api")

MEMORY_COLUMNS = ("rss", "backend_active", "backend_peak", "backend_driver", "system_used",
                  "system_available", "system_total", "swap_used")
PROGRESS_COLUMNS = ("tokens_per_s", "eta_s")


def memory_row(data: dict[str, Any]) -> dict[str, float | None]:
    """One memory event (workers/memory.py) as flat chart columns, in bytes."""
    backend, system = data.get("backend") or {}, data.get("system") or {}
    return {"rss": data.get("rss_bytes"), "backend_active": backend.get("active_bytes"),
            "backend_peak": backend.get("peak_bytes"),
            "backend_driver": backend.get("driver_bytes"), "system_used": system.get("used"),
            "system_available": system.get("available"), "system_total": system.get("total"),
            "swap_used": system.get("swap_used")}


def _number(v: Any) -> float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def series(session: Session, job_id: int, kind: str, max_points: int | None,
           after_seq: int = 0) -> dict[str, Any]:
    """Columnar {"seq", "t", (memory: "elapsed_s" | progress: "step"), columns…}.

    ``t`` is the event's unix time; ``elapsed_s`` counts from the job's first event so the
    memory chart's x axis reads "minutes into the run".
    """
    rows = session.exec(select(Event.seq, Event.t, Event.data).where(
        Event.job_id == job_id, Event.type == kind, Event.seq > after_seq).order_by(Event.seq))
    first_t = session.exec(select(Event.t).where(Event.job_id == job_id)
                           .order_by(Event.seq).limit(1)).first()
    columns = MEMORY_COLUMNS if kind == "memory" else PROGRESS_COLUMNS
    by_seq: dict[int, dict[str, Any]] = {}
    backend_name = None
    for seq, t, data in rows:
        if kind == "memory":
            values = memory_row(data)
            backend_name = (data.get("backend") or {}).get("name") or backend_name
        else:
            values = {c: data.get(c) for c in columns}
            values["step"] = data.get("step")
        by_seq[seq] = {k: _number(v) for k, v in values.items()} | {"t": t}
    seqs = sorted(by_seq)
    if max_points and len(seqs) > max_points:
        seqs = downsample(seqs, by_seq, list(columns), max_points)
    out: dict[str, Any] = {"seq": seqs, "t": [by_seq[s]["t"] for s in seqs]}
    if kind == "memory":
        start = first_t if first_t is not None else (out["t"][0] if seqs else 0.0)
        out["elapsed_s"] = [round(t - start, 3) for t in out["t"]]
        out["backend_name"] = backend_name
    else:
        out["step"] = [by_seq[s]["step"] for s in seqs]
    for c in columns:
        out[c] = [by_seq[s][c] for s in seqs]
    return out


@router.get("/jobs/{job_id}/series/{kind}")
def job_series(job_id: JobId, kind: Literal["memory", "progress"], session: SessionDep,
               max_points: Annotated[int | None, Query(ge=10, le=100_000)] = 2000,
               after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0) -> dict[str, Any]:
    """A job's memory samples (process RSS, backend allocator, system used/available/total,
    swap; bytes, over ``elapsed_s``) or throughput (tokens/s and ETA by ``step``), from the
    stored events; downsampled to ``max_points`` keeping each bucket's peaks and dips."""
    get_job(session, job_id)
    return series(session, job_id, kind, max_points, after_seq)
