"""Loss sparklines for the jobs list: bucketed in SQL, drawn as an inline SVG polyline.

The list re-renders every few seconds for a page of jobs, some of them 100,000 steps long,
so the downsampling happens inside SQLite: one GROUP BY over the (job, name, step) index
gives each job's loss averaged into at most `buckets` slices of its step range. Averaging
(rather than app.metrics' peak-keeping) is what a 120-pixel trend line wants: a noisy loss
drawn min/max per pixel is a solid band. The SVG uses presentation attributes only (the
page CSP refuses inline style attributes); the stroke colour comes from CSS.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlmodel import Session

from app.runs import LOSS_NAME

WIDTH, HEIGHT, PAD = 120, 28, 2

_BUCKETS_SQL = text("""
WITH r AS (
  SELECT job_id, MIN(step) AS lo, MAX(step) AS hi FROM metric
  WHERE name = :name AND job_id IN :ids GROUP BY job_id
)
SELECT m.job_id, CAST((m.step - r.lo) * :buckets / (r.hi - r.lo + 1) AS INTEGER) AS b,
       AVG(m.step), AVG(m.value)
FROM metric AS m JOIN r ON r.job_id = m.job_id
WHERE m.name = :name AND m.job_id IN :ids AND m.value IS NOT NULL
GROUP BY m.job_id, b ORDER BY m.job_id, b
""").bindparams(bindparam("ids", expanding=True))


def loss_series(session: Session, job_ids: list[int], buckets: int = 60,
                name: str = LOSS_NAME) -> dict[int, list[tuple[float, float]]]:
    """job id -> [(step, mean value)] in step order, at most `buckets` points each."""
    if not job_ids:
        return {}
    out: dict[int, list[tuple[float, float]]] = {}
    rows = session.connection().execute(
        _BUCKETS_SQL, {"ids": list(job_ids), "buckets": buckets, "name": name})
    for job_id, _, step, value in rows:
        if value is not None:
            out.setdefault(job_id, []).append((float(step), float(value)))
    return out


@dataclass(frozen=True)
class Sparkline:
    points: str  # the polyline's "x,y x,y …" in the viewBox
    first: float
    last: float
    low: float
    high: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def label(self) -> str:
        return f"loss from {self.first:.4g} to {self.last:.4g} (low {self.low:.4g})"


def sparkline(series: list[tuple[float, float]], width: int = WIDTH,
              height: int = HEIGHT) -> Sparkline | None:
    """Scale (step, value) pairs into the box; y grows downwards in SVG."""
    finite = [(s, v) for s, v in series if v == v and abs(v) != float("inf")]
    if not finite:
        return None
    steps = [s for s, _ in finite]
    values = [v for _, v in finite]
    s0, s1 = min(steps), max(steps)
    lo, hi = min(values), max(values)
    xspan = (s1 - s0) or 1.0
    yspan = (hi - lo) or 1.0
    coords = []
    for s, v in finite:
        x = PAD + (s - s0) / xspan * (width - 2 * PAD) if s1 > s0 else width / 2
        y = height - PAD - (v - lo) / yspan * (height - 2 * PAD) if hi > lo else height / 2
        coords.append(f"{x:.1f},{y:.1f}")
    if len(coords) == 1:  # one point: a short flat tick so something is visible
        x, y = coords[0].split(",")
        coords = [f"{float(x) - 3:.1f},{y}", f"{float(x) + 3:.1f},{y}"]
    return Sparkline(" ".join(coords), values[0], values[-1], lo, hi, width, height)
