"""Rated answers: creating, listing, counting, changing and deleting Feedback rows, and the
KTO rows a dataset is made of (app/feedback/dataset.py).

A rating names what wrote the answer by its catalog id (``<base>`` or ``<base>@job-<N>``,
app/inference/catalog.py): the row keeps that id (``variant``), the base model's id
(``model``), the adapter folder and the adapter's run (``job_id``). Rated by the answer's id
(``chatcmpl-…``), the row is built from the stored Completion, so it carries what really
answered, not what a client says did. One answer has at most one rating of its own and one
correction: rating it again changes the label (and the note, when one is given).

Errors are JobInputError (app.main answers them as 4xx with the field and the fix).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.config import Settings
from app.errors import JobInputError
from app.inference.catalog import parse_id, resolve
from app.inference.errors import InferenceError
from app.models import Completion, Feedback, Job

SOURCES = ("playground", "correction", "arena", "api")
MAX_LIMIT = 500


@dataclass(frozen=True)
class FeedbackFilter:
    """What GET /api/feedback, its counts, the page and a dataset select by; None: any."""

    model: str | None = None  # the base model's id
    variant: str | None = None  # the catalog id that answered
    job_id: int | None = None
    label: bool | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def describe(self) -> str:
        """The filters in words, for "no feedback matches …"."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                shown = value.isoformat() if isinstance(value, datetime) else value
                parts.append(f"{f.name}={str(shown).lower() if isinstance(value, bool) else shown}")
        return ", ".join(parts) or "no filter"


ANY = FeedbackFilter()  # no filter: every row


# --- what answered ---------------------------------------------------------------------------
def variant_fields(session: Session, variant: str) -> dict[str, Any]:
    """model (base id), variant, adapter folder and job_id of a catalog id, read from the
    job row (not from disk: an adapter deleted since still names its run)."""
    base, job_id = parse_id(variant.strip())
    adapter = ""
    if job_id is not None:
        job = session.get(Job, job_id) if job_id < 2**63 else None
        if job is not None:
            adapter = job.adapter_path or ""
            base = job.model
    return {"model": base, "variant": variant.strip(), "adapter": adapter, "job_id": job_id}


def resolved_fields(session: Session, settings: Settings, variant: str) -> dict[str, Any]:
    """variant_fields of an id that must resolve now (an explicit rating): 404 naming it."""
    try:
        target = resolve(session, settings, variant, facts={})
    except InferenceError as exc:
        raise JobInputError("model", exc.message, status_code=exc.status) from None
    return {"model": target.base, "variant": target.id, "adapter": target.adapter or "",
            "job_id": target.job_id}


# --- creating ----------------------------------------------------------------------------------
def _check_correction(correction: str | None) -> str | None:
    if correction is None:
        return None
    if not correction.strip():
        raise JobInputError("correction", "the correction is empty: write what the answer "
                            "should have said, or leave correction out")
    return correction


def add_rows(session: Session, base: dict[str, Any], label: bool, note: str = "",
             correction: str | None = None, commit: bool = True) -> list[Feedback]:
    """The rating (and with a correction: the answer 👎 and the correction 👍, source
    "correction") from ``base``: Feedback's fields but label, note and source defaulting to
    "api". One transaction: both rows or none."""
    correction = _check_correction(correction)
    rows = [Feedback(**{"source": "api", **base}, label=False if correction else label,
                     note=note)]
    if correction is not None:
        rows.append(Feedback(**{**base, "source": "correction", "answer": correction},
                             label=True, note=note))
    for row in rows:
        session.add(row)
    if commit:
        session.commit()
        for row in rows:
            session.refresh(row)
    return rows


def from_completion(session: Session, completion_id: str, label: bool, note: str | None = None,
                    correction: str | None = None, source: str = "playground"
                    ) -> list[Feedback]:
    """Rate a stored answer by its id; rating it again changes its row (and its correction's)
    instead of adding one."""
    done = session.get(Completion, completion_id.strip())
    if done is None:
        raise JobInputError("completion_id", f"answer {completion_id} is no longer stored "
                            "(the newest 10,000 answers are kept) or never was: rate it with "
                            "model, messages and answer instead", status_code=404)
    correction = _check_correction(correction)
    mine = session.exec(select(Feedback).where(Feedback.completion_id == done.id)
                        .order_by(Feedback.id)).all()
    original = next((r for r in mine if r.source != "correction"), None)
    fixed = next((r for r in mine if r.source == "correction"), None)
    if original is None:
        base = {**variant_fields(session, done.model), "messages": done.messages,
                "answer": done.answer, "sampling": done.sampling, "source": source,
                "completion_id": done.id}
        if fixed is None:
            return add_rows(session, base, label, note or "", correction)
        original = add_rows(session, base, label, note or "", commit=False)[0]
    original.label = False if correction is not None else label
    if note is not None:
        original.note = note
    session.add(original)
    rows = [original]
    if correction is not None:
        if fixed is None:
            fixed = Feedback(**{k: getattr(original, k) for k in (
                "model", "variant", "adapter", "job_id", "messages", "sampling",
                "completion_id")}, answer=correction, label=True, source="correction",
                note=original.note)
        fixed.answer = correction
        session.add(fixed)
        rows.append(fixed)
    session.commit()
    for row in rows:
        session.refresh(row)
    return rows


def explicit(session: Session, settings: Settings, model: str, messages: list[dict[str, Any]],
             answer: str, label: bool, sampling: dict[str, Any] | None = None, note: str = "",
             correction: str | None = None) -> list[Feedback]:
    """Rate an answer given in full (source "api"); the model id must resolve now."""
    base = {**resolved_fields(session, settings, model), "messages": messages,
            "answer": answer, "sampling": sampling or {}, "source": "api"}
    return add_rows(session, base, label, note, correction)


# --- reading -----------------------------------------------------------------------------------
def _where(query, flt: FeedbackFilter):
    if flt.model is not None:
        query = query.where(Feedback.model == flt.model)
    if flt.variant is not None:
        query = query.where(Feedback.variant == flt.variant)
    if flt.job_id is not None:
        query = query.where(Feedback.job_id == flt.job_id)
    if flt.label is not None:
        query = query.where(Feedback.label == flt.label)
    if flt.source is not None:
        query = query.where(Feedback.source == flt.source)
    if flt.since is not None:
        query = query.where(Feedback.created_at >= flt.since)
    if flt.until is not None:
        query = query.where(Feedback.created_at <= flt.until)
    return query


def list_feedback(session: Session, flt: FeedbackFilter = ANY, limit: int = 50,
                  offset: int = 0) -> tuple[list[Feedback], int]:
    """The rows matching, newest first, and how many match in all."""
    total = session.exec(_where(select(func.count()).select_from(Feedback), flt)).one()
    rows = session.exec(_where(select(Feedback), flt).order_by(col(Feedback.id).desc())
                        .offset(offset).limit(min(limit, MAX_LIMIT))).all()
    return list(rows), int(total)


def counts(session: Session, flt: FeedbackFilter = ANY) -> dict[str, Any]:
    """{total, desirable, undesirable, by_variant: {variant: {desirable, undesirable}}}."""
    grouped = session.exec(_where(select(Feedback.variant, Feedback.label, func.count())
                                  .group_by(Feedback.variant, Feedback.label), flt)).all()
    by_variant: dict[str, dict[str, int]] = {}
    good = bad = 0
    for variant, label, n in grouped:
        entry = by_variant.setdefault(variant, {"desirable": 0, "undesirable": 0})
        entry["desirable" if label else "undesirable"] += n
        good, bad = (good + n, bad) if label else (good, bad + n)
    return {"total": good + bad, "desirable": good, "undesirable": bad,
            "by_variant": dict(sorted(by_variant.items()))}


def facets(session: Session) -> dict[str, list[str]]:
    """The models and variants there is feedback for (the page's filter choices)."""
    return {"model": list(session.exec(select(Feedback.model).distinct()
                                       .order_by(Feedback.model))),
            "variant": list(session.exec(select(Feedback.variant).distinct()
                                         .order_by(Feedback.variant)))}


def get(session: Session, feedback_id: int) -> Feedback:
    row = session.get(Feedback, feedback_id) if 0 < feedback_id < 2**63 else None
    if row is None:
        raise JobInputError("id", f"there is no feedback {feedback_id}; GET /api/feedback "
                            "lists them", status_code=404)
    return row


def update(session: Session, feedback_id: int, label: bool | None = None,
           note: str | None = None) -> Feedback:
    row = get(session, feedback_id)
    if label is not None:
        row.label = label
    if note is not None:
        row.note = note
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def delete(session: Session, feedback_id: int) -> None:
    session.delete(get(session, feedback_id))
    session.commit()


# --- datasets ----------------------------------------------------------------------------------
def selected(session: Session, ids: list[int] | None = None,
             flt: FeedbackFilter = ANY) -> list[Feedback]:
    """The rows a dataset is made of: ``ids`` (unknown ids are a 404), else the filter's,
    oldest first."""
    if ids is not None:
        wanted = sorted(set(ids))
        rows = list(session.exec(select(Feedback).where(col(Feedback.id).in_(wanted))
                                 .order_by(Feedback.id))) if wanted else []
        missing = sorted(set(wanted) - {r.id for r in rows})
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
            raise JobInputError("ids", f"there is no feedback {shown}; GET /api/feedback "
                                "lists them", status_code=404)
        return rows
    return list(session.exec(_where(select(Feedback), flt).order_by(Feedback.id)))


def kto_row(row: Feedback) -> dict[str, Any]:
    """The conversational KTO row contract/rows.py reads."""
    return {"prompt": [{"role": m.get("role", "user"), "content": m.get("content", "")}
                       for m in row.messages],
            "completion": [{"role": "assistant", "content": row.answer}],
            "label": bool(row.label)}


def rows_for_dataset(session: Session, ids: list[int] | None = None,
                     flt: FeedbackFilter = ANY) -> list[dict[str, Any]]:
    return [kto_row(r) for r in selected(session, ids, flt)]


__all__ = ["ANY", "SOURCES", "FeedbackFilter", "add_rows", "counts", "delete", "explicit", "facets",
           "from_completion", "get", "kto_row", "list_feedback", "resolved_fields",
           "rows_for_dataset", "selected", "update", "variant_fields"]
