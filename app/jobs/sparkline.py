"""Loss sparklines for the jobs list: sampled in SQL, drawn as an inline SVG polyline.

The list re-renders every few seconds for a page of jobs, some of them 100,000 steps long,
so no sparkline may read a run's every point. Each run's step range is cut into `buckets`
slices and each slice is represented by the mean of its first `window` points: a handful of
index seeks on (job, name, step) per slice, whatever the run's length (0.3 ms for a
100,000-step run, against 150 ms for a GROUP BY over all its rows). The mean of a few
points, not a single one, keeps a noisy per-batch loss from drawing as noise; a slice with
fewer points than the window is averaged whole, so a short run is drawn exactly. The SVG
uses presentation attributes only (the page CSP refuses inline style attributes); the
stroke colour comes from CSS.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel import Session

from app.jobs.history import LOSS_NAME

WIDTH, HEIGHT, PAD = 120, 28, 2
WINDOW = 16


def _values(rows: list[tuple[int, ...]]) -> str:
    # Only integers this module computed go into the statement text.
    return ",".join("(" + ",".join(str(int(v)) for v in row) + ")" for row in rows)


def _ranges(session: Session, job_ids: list[int], name: str) -> dict[int, tuple[int, int]]:
    """Each job's first and last step of `name`; single MIN/MAX subqueries are index seeks."""
    sql = text(f"""
WITH j(id) AS (VALUES {_values([(i,) for i in job_ids])})
SELECT id,
  (SELECT MIN(step) FROM metric WHERE job_id = j.id AND name = :name),
  (SELECT MAX(step) FROM metric WHERE job_id = j.id AND name = :name)
FROM j""")
    return {jid: (lo, hi) for jid, lo, hi in session.connection().execute(sql, {"name": name})
            if lo is not None}


def loss_series(session: Session, job_ids: list[int], buckets: int = 60,
                name: str = LOSS_NAME, window: int = WINDOW) -> dict[int, list[tuple]]:
    """job id -> [(step, value)] in step order, at most `buckets` points each."""
    if not job_ids:
        return {}
    slices: list[tuple[int, int, int, int]] = []  # job, slice, first step, next slice's
    for jid, (lo, hi) in _ranges(session, list(job_ids), name).items():
        span = hi - lo + 1
        edges = sorted({lo + k * span // buckets for k in range(buckets)})
        for k, start in enumerate(edges):
            slices.append((jid, k, start, edges[k + 1] if k + 1 < len(edges) else hi + 1))
    if not slices:
        return {}
    pick = ("SELECT {col} FROM metric WHERE job_id = s.job AND name = :name AND step >= s.lo "
            "AND step < s.hi AND value IS NOT NULL ORDER BY step LIMIT :window")
    sql = text(f"""
WITH s(job, k, lo, hi) AS (VALUES {_values(slices)})
SELECT job, (SELECT AVG(step) FROM ({pick.format(col="step")})),
            (SELECT AVG(value) FROM ({pick.format(col="value")}))
FROM s ORDER BY job, k""")
    out: dict[int, list[tuple]] = {}
    for jid, step, value in session.connection().execute(sql, {"name": name,
                                                                "window": window}):
        if value is not None:
            out.setdefault(jid, []).append((float(step), float(value)))
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


REL_SPAN_FLOOR = 1e-3  # the same floor as the charts' y axis (static/js/charts.js)
ABS_SPAN_FLOOR = 1e-12


def value_box(lo: float, hi: float) -> tuple[float, float]:
    """The (bottom, span) of the y range drawn for values lo..hi. A span under 1e-3 of the
    values' magnitude is below the 4 digits the list shows and would turn float noise into
    a full-height cliff (loss 0.499992 -> 0.500000): it is widened around its middle, so a
    nearly flat series draws flat in the middle of the box."""
    floor = max(max(abs(lo), abs(hi)) * REL_SPAN_FLOOR, ABS_SPAN_FLOOR)
    if hi - lo >= floor:
        return lo, hi - lo
    return (lo + hi) / 2 - floor / 2, floor


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
    ylo, yspan = value_box(lo, hi)
    coords = []
    for s, v in finite:
        x = PAD + (s - s0) / xspan * (width - 2 * PAD) if s1 > s0 else width / 2
        y = height - PAD - (v - ylo) / yspan * (height - 2 * PAD)
        coords.append(f"{x:.1f},{y:.1f}")
    if len(coords) == 1:  # one point: a short flat tick so something is visible
        x, y = coords[0].split(",")
        coords = [f"{float(x) - 3:.1f},{y}", f"{float(x) + 3:.1f},{y}"]
    return Sparkline(" ".join(coords), values[0], values[-1], lo, hi, width, height)
