"""A run's record after the fact: edit its name, notes and tags; export its metrics; pick
runs by id for a comparison. The REST API and the pages (/compare, the job page's notes
block) share these."""

from __future__ import annotations

import csv
import io
import re

from sqlmodel import Session, select

from app.errors import JobInputError
from app.jobs.compare import parse_ids
from app.jobs.history import RunEditError, apply_edit
from app.models import Job


class MissingRun(LookupError):
    """A comparison names a job that does not exist (the API answers 404)."""


def edit_run(session: Session, job: Job, **changes) -> Job:
    """Rename a run, or set its notes or tags; a bad value is a JobInputError naming it."""
    try:
        apply_edit(job, **changes)
    except RunEditError as exc:
        raise JobInputError(exc.field, exc.message) from None
    session.add(job)
    session.commit()
    session.refresh(job)
    return job


def runs_by_ids(session: Session, raw: list[str]) -> list[Job]:
    """The jobs ``ids=3,7`` (or repeated ids=) names, in that order."""
    try:
        ids = parse_ids(raw)
    except ValueError as exc:
        raise JobInputError("ids", str(exc)) from None
    found = {j.id: j for j in session.exec(select(Job).where(Job.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise MissingRun(f"job {missing[0]} does not exist; pick runs from GET /api/jobs")
    return [found[i] for i in ids]


def run_summary(job: Job) -> dict:
    return {"id": job.id, "name": job.name, "status": job.status, "backend": job.backend,
            "method": job.method, "model": job.model, "dataset": job.dataset,
            "step": job.step, "tags": job.tags, "params": job.params,
            "tuning": job.tuning}


def export_filename(job: Job, ext: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.name).strip("-.")[:60]
    return f"job-{job.id}{'-' + slug if slug else ''}-metrics.{ext}"


def metrics_csv(cols: dict[str, list]) -> str:
    """Columnar metrics (app/jobs/metrics.py) as CSV: a `step` column, one per metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(cols)
    writer.writerow(names)
    for i in range(len(cols["step"])):
        # repr keeps every digit of a float; an empty cell is a metric not logged at that step
        writer.writerow(["" if (v := cols[n][i]) is None else repr(v) for n in names])
    return buf.getvalue()
