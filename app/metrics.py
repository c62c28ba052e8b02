"""Columnar metric queries, with peak-keeping downsampling for long runs."""

from __future__ import annotations

from sqlmodel import Session, select

from app.models import Metric


def columnar(session: Session, job_id: int, names: list[str] | None = None,
             since_step: int | None = None, max_points: int | None = None) -> dict[str, list]:
    """{"step": [...], name: [...]} aligned by step; None where a name has no value there."""
    q = select(Metric.step, Metric.name, Metric.value).where(Metric.job_id == job_id)
    if names:
        q = q.where(Metric.name.in_(names))
    if since_step is not None:
        q = q.where(Metric.step > since_step)
    by_step: dict[int, dict[str, float | None]] = {}
    seen: dict[str, None] = {}
    # A step logged twice (a run interrupted after its last checkpoint, then resumed from it,
    # logs those steps again) keeps the later write by seq: the resumed attempt, the one the
    # adapter comes from. events.jsonl and the SSE stream keep both.
    for step, name, value in session.exec(q.order_by(Metric.step, Metric.seq)):
        by_step.setdefault(step, {})[name] = value
        seen.setdefault(name, None)
    steps = sorted(by_step)
    if max_points and len(steps) > max_points:
        steps = downsample(steps, by_step, list(seen), max_points)
    out: dict[str, list] = {"step": steps}
    for name in (names or list(seen)):
        out[name] = [by_step[s].get(name) for s in steps]
    return out


def downsample(steps: list[int], by_step: dict[int, dict], names: list[str],
               max_points: int) -> list[int]:
    """Keep the first and last step and, per bucket, the steps where a series peaks or dips."""
    keep = {steps[0], steps[-1]}
    per_bucket = max(1, 2 * max(1, len(names)))
    buckets = max(1, (max_points - 2) // per_bucket)
    size = len(steps) / buckets
    for b in range(buckets):
        chunk = steps[int(b * size): int((b + 1) * size)]
        if not chunk:
            continue
        for name in names:
            vals = [(by_step[s][name], s) for s in chunk if by_step[s].get(name) is not None]
            if vals:
                keep.add(min(vals)[1])
                keep.add(max(vals)[1])
        if len(keep) < 2 + (b + 1) and chunk:
            keep.add(chunk[0])
    return sorted(keep)[: max_points] if len(keep) > max_points else sorted(keep)
