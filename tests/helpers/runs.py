"""Runs with metrics written straight into a server's database (no training), shared by the
runs tests: the list, filters and sparklines only need rows, not workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlmodel import Session

from app.config import Settings
from app.db import make_engine
from app.models import Job, JobStatus, Metric


def engine_for(home):
    return make_engine(Settings(home=home).db_path)


def add_run(engine, name: str, *, status=JobStatus.succeeded, backend="torch", method="kto",
            model="tiny-demo", dataset="demo-kto", params=None, tags=(), notes="",
            minutes: float | None = 2.0, losses=(), extra: dict | None = None,
            created_ago_s: float = 0) -> int:
    """A job, its loss at steps 1..n (and other metrics from `extra`: name -> values)."""
    now = datetime.now(UTC)
    start = now - timedelta(minutes=minutes) if minutes is not None else None
    with Session(engine) as s:
        job = Job(name=name, status=status, backend=backend, method=method, model=model,
                  dataset=dataset, params=params or {"learning_rate": 5e-7, "beta": 0.1},
                  tags=list(tags), notes=notes, started_at=start,
                  created_at=now - timedelta(seconds=created_ago_s),
                  finished_at=now if start and status.is_final else None,
                  step=len(losses), total_steps=len(losses) or None)
        s.add(job)
        s.commit()
        series = {"loss": list(losses), **(extra or {})}
        rows = [{"job_id": job.id, "step": step, "name": metric, "value": value}
                for metric, values in series.items()
                for step, value in enumerate(values, start=1)]
        if rows:  # executemany: a 100,000-step run as ORM objects takes half a minute
            s.execute(insert(Metric), [{**r, "seq": i} for i, r in enumerate(rows, start=1)])
        s.commit()
        return job.id
