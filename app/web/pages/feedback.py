"""The Feedback page: the rated answers (playground, corrections, arena, REST) with filters,
flip and delete, the counts, and "Make dataset" from the ticked rows or all that match.

The filters live in the URL (an htmx GET swaps the results and pushes it). Flip, delete and
make-dataset post here with the page's CSRF header (CsrfForm); the work is app/feedback/, the
same functions /api/feedback calls. A flip or a delete swaps its row and tells the counts to
refresh (HX-Trigger ``feedback-changed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, select

from app.errors import JobInputError
from app.feedback import store
from app.feedback.dataset import make_dataset
from app.feedback.store import FeedbackFilter
from app.models import DatasetEntry, Feedback
from app.web.deps import CsrfForm, SessionDep, SettingsDep
from app.web.templating import page

router = APIRouter(include_in_schema=False)
PER_PAGE = 50
KEYS = ("model", "variant", "label", "source", "from", "to")
CHANGED = {"HX-Trigger": "feedback-changed"}


@dataclass
class PageQuery:
    """The page's filters as given (strings, for the form and the links) and as a filter."""

    values: dict[str, str] = field(default_factory=dict)
    flt: FeedbackFilter = store.ANY
    page_no: int = 1
    problems: list[str] = field(default_factory=list)

    def url(self, **more: Any) -> str:
        params = {k: v for k, v in {**self.values, **more}.items() if v not in ("", None)}
        return urlencode(params)


def _day(text: str, key: str, problems: list[str]) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        problems.append(f"{key} {text!r} is not a date like 2026-11-30; it was left out")
        return None


def read_query(params: Any) -> PageQuery:
    values = {k: str(params.get(k, "") or "").strip()[:1000] for k in KEYS}
    problems: list[str] = []
    label = {"true": True, "false": False}.get(values["label"])
    if values["source"] not in store.SOURCES:
        values["source"] = ""
    start, end = _day(values["from"], "from", problems), _day(values["to"], "to", problems)
    flt = FeedbackFilter(
        model=values["model"] or None, variant=values["variant"] or None, label=label,
        source=values["source"] or None,
        since=datetime(start.year, start.month, start.day, tzinfo=UTC) if start else None,
        until=datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        if end else None)
    page_text = str(params.get("page", "1"))
    page_no = int(page_text) if page_text.isdigit() and 0 < int(page_text) < 10**6 else 1
    return PageQuery(values, flt, page_no, problems)


def conversation(row: Feedback) -> dict[str, Any]:
    """The last user message (what the row shows) and the turns before it."""
    users = [m for m in row.messages if m.get("role") == "user"]
    return {"last": users[-1].get("content", "") if users else "",
            "turns": len(row.messages)}


def results_context(session: Session, query: PageQuery) -> dict[str, Any]:
    rows, total = store.list_feedback(session, query.flt, PER_PAGE,
                                      (query.page_no - 1) * PER_PAGE)
    pages = max(1, -(-total // PER_PAGE))
    if query.page_no > pages:
        query.page_no = pages
        rows, total = store.list_feedback(session, query.flt, PER_PAGE, (pages - 1) * PER_PAGE)
    return {"rows": [(r, conversation(r)) for r in rows], "total": total, "query": query,
            "pages": pages, "counts": store.counts(session, query.flt),
            "all_counts": store.counts(session)}


def kto_datasets(session: Session) -> list[str]:
    return list(session.exec(select(DatasetEntry.id).where(DatasetEntry.kind == "kto")
                             .order_by(DatasetEntry.id)))


@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(request: Request, session: SessionDep) -> HTMLResponse:
    query = read_query(request.query_params)
    return page(request, "feedback.html", nav="feedback", facets=store.facets(session),
                sources=store.SOURCES, datasets=kto_datasets(session),
                **results_context(session, query))


@router.get("/fragments/feedback/counts", response_class=HTMLResponse)
def counts_fragment(request: Request, session: SessionDep) -> HTMLResponse:
    query = read_query(request.query_params)
    return page(request, "_feedback_counts.html", query=query,
                counts=store.counts(session, query.flt), all_counts=store.counts(session))


def _row(request: Request, row: Feedback) -> HTMLResponse:
    response = page(request, "_feedback_row.html", r=row, c=conversation(row))
    response.headers.update(CHANGED)
    return response


@router.post("/feedback/{feedback_id}/flip", response_class=HTMLResponse)
def flip_action(feedback_id: int, request: Request, session: SessionDep,
                _form: CsrfForm) -> Response:
    """👍 ⇄ 👎: the row comes back with its new label."""
    try:
        row = store.get(session, feedback_id)
    except JobInputError:
        return _gone()
    return _row(request, store.update(session, row.id, label=not row.label))


def _gone() -> Response:
    """A row deleted meanwhile (another tab): it leaves the table; the counts refresh."""
    return Response(content="", status_code=200, headers=CHANGED)


@router.delete("/feedback/{feedback_id}", response_class=HTMLResponse)
def delete_action(feedback_id: int, session: SessionDep, _form: CsrfForm) -> Response:
    """The row leaves the table; the counts refresh."""
    try:
        store.delete(session, feedback_id)
    except JobInputError:
        return _gone()
    return Response(content="", status_code=200, headers=CHANGED)


@router.post("/feedback/dataset", response_class=HTMLResponse)
async def make_action(request: Request, session: SessionDep, settings: SettingsDep,
                      form: CsrfForm) -> HTMLResponse:
    """Make dataset: the ticked rows, or every row matching the filters ("all matching")."""
    query = read_query(form)
    name = str(form.get("name", "")).strip()
    merge = str(form.get("merge_with", "")).strip() or None
    every = form.get("all") == "1"
    ids = [int(v) for v in form.getlist("ids") if str(v).isdigit() and len(str(v)) < 19]
    context: dict[str, Any] = {"dataset_name": name, "merge_with": merge}
    if not every and not ids:
        return page(request, "_feedback_made.html", error="Tick the rows to use, or “all "
                    "matching the filters”; no dataset was made.", **context)
    try:
        entry, url = await run_in_threadpool(make_dataset, session, settings, name,
                                             None if every else ids, query.flt, merge)
    except JobInputError as exc:
        return page(request, "_feedback_made.html", error=exc.message.rstrip(".") + ".",
                    **context)
    return page(request, "_feedback_made.html", entry=entry, train_url=url, **context)
