"""Columnar metric queries, with peak-keeping downsampling for long runs.

A 100,000-step run logs some 800,000 metric rows. They are read with one plain SQL query
over the covering index (job, name, step, seq, value): no ORM objects, no sort, no table
look-ups; that, and one pass per series for the downsampling, is what keeps the job page's
first draw of a long run fast (bench/dashboard.py measures it).
"""

from __future__ import annotations

from sqlmodel import Session


def columnar(session: Session, job_id: int, names: list[str] | None = None,
             since_step: int | None = None, max_points: int | None = None) -> dict[str, list]:
    """{"step": [...], name: [...]} aligned by step; None where a name has no value there."""
    sql = "SELECT name, step, seq, id, value FROM metric WHERE job_id = ?"
    args: list = [job_id]
    if names:
        sql += f" AND name IN ({', '.join('?' * len(names))})"
        args += names
    if since_step is not None:
        sql += " AND step > ?"
        args.append(since_step)
    # A step logged twice (a run interrupted after its last checkpoint, then resumed from it,
    # logs those steps again) keeps the later write by seq: the resumed attempt, the one the
    # adapter comes from. events.jsonl and the SSE stream keep both.
    sql += " ORDER BY name, step, seq"
    series: dict[str, dict[int, float | None]] = {}
    first: dict[str, tuple[int, int, int]] = {}
    current_name, current = None, {}
    for name, step, seq, row, value in session.connection().exec_driver_sql(sql, tuple(args)):
        if name != current_name:
            current_name, current = name, series.setdefault(name, {})
            first[name] = (step, seq, row)  # row id: the order within one event
        current[step] = value
    # Names in the order the run first logged them (loss before kl …), as the events had them.
    series = {name: series[name] for name in sorted(series, key=first.__getitem__)}
    steps = sorted(set().union(*series.values())) if series else []
    if max_points and len(steps) > max_points:
        steps = downsample(steps, series, max_points)
    out: dict[str, list] = {"step": steps}
    for name in (names or list(series)):
        values = series.get(name, {})
        out[name] = [values.get(s) for s in steps]
    return out


def downsample(steps: list[int], series: dict[str, dict[int, float | None]],
               max_points: int) -> list[int]:
    """Keep the first and last step and, per bucket of steps, its first step and the steps
    where each series peaks and dips: a one-step spike survives any amount of thinning, and a
    stretch where nothing was logged still has a point."""
    n = len(steps)
    buckets = max(1, (max_points - 2) // (2 * len(series) + 1))
    keep = {steps[0], steps[-1]}
    keep.update(steps[b * n // buckets] for b in range(buckets))
    position = {s: i for i, s in enumerate(steps)}
    for values in series.values():
        low: dict[int, tuple[float, int]] = {}
        high: dict[int, tuple[float, int]] = {}
        for step, v in values.items():
            if v is None:
                continue
            b = position[step] * buckets // n
            lo = low.get(b)
            if lo is None or v < lo[0]:
                low[b] = (v, step)
            hi = high.get(b)
            if hi is None or v > hi[0]:
                high[b] = (v, step)
        keep.update(step for _, step in low.values())
        keep.update(step for _, step in high.values())
    return sorted(keep)
