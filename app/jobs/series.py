"""Time series the job page charts besides metrics: memory samples and training throughput.

Both come from the stored events (app/jobs/ingest.py keeps every event in the ``event`` table),
so a finished job's page draws the same charts as a live one, long after its worker is gone.
A day-long run reports memory every 2 s (~43,000 samples) and progress every step: the
answer is downsampled on the server with the same peak-keeping buckets as the metrics, so a
spike in memory is never averaged away.

A job on several processes (GPUs of this machine, or Macs) reports every rank's memory in
``backend.ranks`` (rank 0 gathers them): the memory series then has one column per rank,
``rank<r>_active`` (bytes the rank's allocator holds; a CPU rank's RSS), and ``ranks``, the
ranks seen with their hosts, so the chart draws a line per GPU.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, null
from sqlmodel import Session, select

from app.jobs.metrics import downsample
from app.models import Event

MEMORY_COLUMNS = ("rss", "backend_active", "backend_peak", "backend_driver", "system_used",
                  "system_available", "system_total", "swap_used")
PROGRESS_COLUMNS = ("tokens_per_s", "eta_s")


# Where each column lives in an event's JSON; SQLite's json_extract reads them in C, which is
# several times faster than handing every event's whole blob to Python's json module.
MEMORY_PATHS = {"rss": "$.rss_bytes", "backend_active": "$.backend.active_bytes",
                "backend_peak": "$.backend.peak_bytes", "backend_driver": "$.backend.driver_bytes",
                "system_used": "$.system.used", "system_available": "$.system.available",
                "system_total": "$.system.total", "swap_used": "$.system.swap_used"}
PROGRESS_PATHS = {"step": "$.step", "tokens_per_s": "$.tokens_per_s", "eta_s": "$.eta_s"}


def _number(v: Any) -> float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def series(session: Session, job_id: int, kind: str, max_points: int | None,
           after_seq: int = 0) -> dict[str, Any]:
    """Columnar {"seq", "t", (memory: "elapsed_s" | progress: "step"), columns…}.

    ``t`` is the event's unix time; ``elapsed_s`` counts from the job's first event so the
    memory chart's x axis reads "minutes into the run".
    """
    paths = MEMORY_PATHS if kind == "memory" else PROGRESS_PATHS
    columns = MEMORY_COLUMNS if kind == "memory" else PROGRESS_COLUMNS
    where = (Event.job_id == job_id, Event.type == kind, Event.seq > after_seq)
    picked = [func.json_extract(Event.data, path) for path in paths.values()]
    # The ranks' array (JSON text; null for a one-process job), read only for memory.
    ranks = func.json_extract(Event.data, "$.backend.ranks") if kind == "memory" else null()
    rows = session.exec(select(Event.seq, Event.t, ranks, *picked).where(*where)
                        .order_by(Event.seq))
    first_t = session.exec(select(Event.t).where(Event.job_id == job_id)
                           .order_by(Event.seq).limit(1)).first()
    names = list(paths)
    by_seq: dict[int, dict[str, Any]] = {}
    hosts: dict[int, str] = {}
    for seq, t, per_rank, *values in rows:
        by_seq[seq] = {n: _number(v) for n, v in zip(names, values, strict=True)} | {"t": t}
        if per_rank is not None:
            by_seq[seq].update(_rank_values(per_rank, hosts))
    seqs = sorted(by_seq)
    if hosts:
        columns = (*columns, *(f"rank{r}_active" for r in sorted(hosts)))
    if max_points and len(seqs) > max_points:
        seqs = downsample(seqs, {c: {s: by_seq[s].get(c) for s in seqs} for c in columns},
                          max_points)
    out: dict[str, Any] = {"seq": seqs, "t": [by_seq[s]["t"] for s in seqs]}
    if kind == "memory":
        start = first_t if first_t is not None else (out["t"][0] if seqs else 0.0)
        out["elapsed_s"] = [round(t - start, 3) for t in out["t"]]
        out["backend_name"] = session.exec(
            select(func.json_extract(Event.data, "$.backend.name")).where(
                *where, func.json_extract(Event.data, "$.backend.name").is_not(None))
            .order_by(Event.seq.desc()).limit(1)).first()
    else:
        out["step"] = [by_seq[s]["step"] for s in seqs]
    for c in columns:
        out[c] = [by_seq[s].get(c) for s in seqs]
    if kind == "memory":
        out["ranks"] = [{"rank": r, "host": hosts[r]} for r in sorted(hosts)]
    return out


def _rank_values(raw: Any, hosts: dict[int, str]) -> dict[str, float | None]:
    """``backend.ranks`` (JSON text from SQLite) as {"rank<r>_active": bytes}; each rank's
    host is noted in ``hosts``. Entries that are not {rank: int, …} are skipped."""
    try:
        ranks = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    out: dict[str, float | None] = {}
    for entry in ranks if isinstance(ranks, list) else []:
        r = entry.get("rank") if isinstance(entry, dict) else None
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < 1024:
            continue
        hosts.setdefault(r, str(entry.get("host") or ""))
        out[f"rank{r}_active"] = _number(entry.get("active_bytes"))
    return out
