"""Comparing runs: which settings differ, which metrics they share, series per run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from app.models import Job
from app.planner.tune import label

MAX_RUNS = 12
FIXED = ("backend", "method", "model", "dataset")


@dataclass(frozen=True)
class DiffRow:
    name: str
    values: list[str]  # one per run, as a person would type it; "—" where a run lacks it

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


def show(value: Any, missing: bool = False) -> str:
    if missing:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) + ".0" if value == int(value) and abs(value) < 1e15 \
            else f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(show(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def tuned(job: Job) -> str:
    """Whether auto-tuning chose the speed knobs (the params hold the values it chose)."""
    chosen = (job.tuning or {}).get("chosen")
    if chosen:
        return f"auto: {label(job.backend, chosen)}"
    return "auto, not measured" if (job.params or {}).get("tune") == "auto" else "no"


def settings_diff(jobs: list[Job]) -> list[DiffRow]:
    """Backend, method, model, dataset, whether tuned (where any run was), then every param
    any run has (sorted by name: the values actually used, a tuned run's chosen ones)."""
    rows = [DiffRow(name, [show(getattr(j, name)) for j in jobs]) for name in FIXED]
    if any(j.tuning or (j.params or {}).get("tune") == "auto" for j in jobs):
        rows.append(DiffRow("tuned", [tuned(j) for j in jobs]))
    names = sorted({k for j in jobs for k in (j.params or {})})
    for name in names:
        rows.append(DiffRow(name, [show(j.params.get(name), name not in j.params)
                                   for j in jobs]))
    return rows


# The distinct names by hopping the (job, name, step) index from one name to the next: one
# seek per name, where SELECT DISTINCT would read every point of a long run (100 ms and more).
_NAMES_SQL = text("""
WITH RECURSIVE n(name) AS (
  SELECT MIN(name) FROM metric WHERE job_id = :job
  UNION ALL
  SELECT (SELECT MIN(name) FROM metric WHERE job_id = :job AND name > n.name)
  FROM n WHERE n.name IS NOT NULL
)
SELECT name FROM n WHERE name IS NOT NULL""")


def metric_names(session: Session, job_ids: list[int]) -> list[str]:
    """The union of metric names the runs logged, loss first (the usual thing to compare)."""
    names: set[str] = set()
    for job_id in job_ids:
        names.update(r[0] for r in session.connection().execute(_NAMES_SQL, {"job": job_id}))
    return sorted(names, key=lambda n: (n != "loss", n))


def parse_ids(raw: list[str]) -> list[int]:
    """"1,2" or ids=1&ids=2 (a form's checkboxes) -> [1, 2], order kept, duplicates dropped.
    Raises ValueError with the message a person needs."""
    ids: list[int] = []
    for part in ",".join(raw).split(","):
        part = part.strip()
        if not part:
            continue
        if not (part.isascii() and part.isdigit()) or not 1 <= int(part) < 2**63:
            raise ValueError(f"{part[:20]!r} is not a job id; give ids like ids=3,7")
        if int(part) not in ids:
            ids.append(int(part))
    if len(ids) > MAX_RUNS:
        raise ValueError(f"{len(ids)} runs given; compare at most {MAX_RUNS} at a time")
    return ids
