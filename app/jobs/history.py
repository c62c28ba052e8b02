"""Run history queries: filter, search, sort and page the jobs; their final loss; facets.

One query builder serves both the REST list (GET /api/jobs) and the jobs page, so a
filtered page and the API agree on what "status=failed&sort=final_loss" means. Final loss
and duration are SQL expressions, not Python, so sorting by them pages correctly and costs
one indexed lookup per row (ix_metric_job_name_step) rather than loading any metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import case, func, literal_column, or_, text
from sqlmodel import Session, select

from app.models import Job, JobStatus, Metric

SortKey = Literal["created", "name", "status", "duration", "final_loss"]
SORT_KEYS: tuple[str, ...] = ("created", "name", "status", "duration", "final_loss")
# What a person most likely wants first when they pick a column: newest, A→Z, lifecycle
# order, longest, lowest loss.
DEFAULT_ORDER = {"created": "desc", "name": "asc", "status": "asc", "duration": "desc",
                 "final_loss": "asc"}
LOSS_NAME = "loss"  # the training loss every worker logs (torch KTO, MLX SFT and KTO)

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]*$")
TAG_MAX_LEN = 32
TAGS_MAX = 20
NOTES_MAX = 10_000
NAME_MAX = 200


def final_loss_expr():
    """The loss logged at a job's last step (the later write wins where a resumed run logged
    a step twice, as app.jobs.metrics.columnar does)."""
    # Two index seeks: the last step, then its value. ORDER BY step DESC, seq DESC in one
    # go would sort all of a run's rows (the index has no seq), 100 ms on a 100k-step run;
    # and a bare ORDER BY seq lets SQLite walk the (job, seq, name) unique index through the
    # whole run instead: `seq + 0` is an expression no index provides, so it seeks
    # (job, name, step) and sorts the one or two rows there.
    last_step = (select(func.max(Metric.step))
                 .where(Metric.job_id == Job.id, Metric.name == LOSS_NAME)
                 .correlate(Job).scalar_subquery())
    return (select(Metric.value)
            .where(Metric.job_id == Job.id, Metric.name == LOSS_NAME, Metric.step == last_step)
            .order_by((Metric.seq + 0).desc())
            .limit(1).correlate(Job).scalar_subquery())


def duration_expr():
    """Seconds from start to finish (to now while it runs); NULL for a job never started.
    SQLite keeps the datetimes as ISO text in UTC, which julianday reads."""
    end = func.coalesce(Job.finished_at, literal_column("'now'"))
    return (func.julianday(end) - func.julianday(Job.started_at)) * 86400.0


STATUS_ORDER = case({s.value: i for i, s in enumerate(JobStatus)}, value=Job.status, else_=99)


@dataclass(frozen=True)
class JobQuery:
    """The filters, sort and page of a jobs listing (the API's query parameters)."""

    status: str | None = None
    backend: str | None = None
    method: str | None = None
    model: str | None = None
    tag: str | None = None
    q: str | None = None
    sort: str = "created"
    order: str | None = None  # None: the sort key's natural direction (DEFAULT_ORDER)
    limit: int = 100
    offset: int = 0

    @property
    def direction(self) -> str:
        return self.order or DEFAULT_ORDER[self.sort]

    def where(self) -> list[Any]:
        conds: list[Any] = []
        if self.status:
            conds.append(Job.status == self.status)
        for column, value in ((Job.backend, self.backend), (Job.method, self.method),
                              (Job.model, self.model)):
            if value:
                conds.append(column == value)
        if self.tag:
            conds.append(text("EXISTS (SELECT 1 FROM json_each(job.tags) AS t "
                              "WHERE t.value = :tag)").bindparams(tag=self.tag))
        if self.q:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", self.q.strip()) + "%"
            conds.append(or_(Job.name.like(pattern, escape="\\"),
                             Job.notes.like(pattern, escape="\\")))
        return conds

    def order_by(self) -> list[Any]:
        key = {"created": Job.id, "name": func.lower(Job.name), "status": STATUS_ORDER,
               "duration": duration_expr(), "final_loss": final_loss_expr()}[self.sort]
        primary = key.asc() if self.direction == "asc" else key.desc()
        # Jobs without a value (never started, no loss yet) go last either way; the id keeps
        # pages stable when values tie.
        return [primary.nulls_last(), Job.id.desc()]


@dataclass
class JobRow:
    """A job as the list shows it: the job, its final loss and (filled later) a sparkline."""

    job: Job
    final_loss: float | None
    spark: Any = None


@dataclass
class JobPage:
    rows: list[JobRow]
    total: int
    query: JobQuery
    facets: dict[str, list[str]] = field(default_factory=dict)


def count_jobs(session: Session, query: JobQuery) -> int:
    q = select(func.count()).select_from(Job)
    for cond in query.where():
        q = q.where(cond)
    return session.exec(q).one()


def list_jobs(session: Session, query: JobQuery) -> list[JobRow]:
    q = select(Job, final_loss_expr())
    for cond in query.where():
        q = q.where(cond)
    q = q.order_by(*query.order_by()).offset(query.offset).limit(query.limit)
    return [JobRow(job, loss) for job, loss in session.exec(q)]


def find_jobs(session: Session, query: JobQuery) -> JobPage:
    return JobPage(list_jobs(session, query), count_jobs(session, query), query)


def facets(session: Session) -> dict[str, list[str]]:
    """The values the filter selects offer: what the jobs actually have."""
    out: dict[str, list[str]] = {}
    for name, column in (("backend", Job.backend), ("method", Job.method),
                         ("model", Job.model)):
        out[name] = list(session.exec(select(column).distinct().order_by(column).limit(500)))
    # As bytes: a tag stored with a lone surrogate (before those were refused) comes out of
    # json_each as invalid UTF-8, which sqlite3 would fail to decode, and the page with it.
    out["tag"] = [bytes(r[0]).decode("utf-8", "replace") for r in session.connection().execute(
        text("SELECT DISTINCT CAST(t.value AS BLOB) FROM job, json_each(job.tags) AS t "
             "ORDER BY 1 LIMIT 500"))]
    return out


def query_from_params(params: dict[str, str], per_page: int) -> tuple[JobQuery, int]:
    """A JobQuery from a page's URL query, forgiving: a value that makes no sense is dropped
    (the page then shows everything) rather than answered with an error page. Returns the
    query and the 1-based page number."""
    def pick(name: str, allowed: tuple[str, ...] | None = None) -> str | None:
        value = (params.get(name) or "").strip()[:NAME_MAX]
        if not value or (allowed is not None and value not in allowed):
            return None
        return value

    try:
        page_no = max(1, min(int(params.get("page") or 1), 1_000_000))
    except ValueError:
        page_no = 1
    query = JobQuery(
        status=pick("status", tuple(s.value for s in JobStatus)),
        backend=pick("backend"), method=pick("method"), model=pick("model"),
        tag=pick("tag"), q=pick("q"), sort=pick("sort", SORT_KEYS) or "created",
        order=pick("order", ("asc", "desc")), limit=per_page, offset=(page_no - 1) * per_page)
    return query, page_no


def url_params(query: JobQuery, **changes: Any) -> dict[str, str]:
    """The non-empty URL parameters of a query (for links that change one of them)."""
    query = replace(query, **{k: v for k, v in changes.items() if k != "page"})
    params = {k: getattr(query, k) for k in ("status", "backend", "method", "model", "tag",
                                              "q", "sort", "order")}
    if params["sort"] == "created":
        params["sort"] = None
    if changes.get("page", 1) > 1:
        params["page"] = changes["page"]
    return {k: str(v) for k, v in params.items() if v}


# --- notes and tags ------------------------------------------------------------------------
class RunEditError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_tags(value: str | list[str]) -> list[str]:
    """Tags from a list or from text ("best, lr-sweep baseline"): trimmed, de-duplicated in
    order; each 1–32 characters of letters, digits and _ . : / + - (starting with a letter
    or digit) so they read as chips and sit in a URL unescaped."""
    items = re.split(r"[,\s]+", value) if isinstance(value, str) else list(value)
    tags: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise RunEditError("tags", "give the tags as a list of strings")
        tag = raw.strip()
        if not tag:
            if isinstance(value, str):
                continue
            raise RunEditError("tags", "a tag is empty; remove it or give it a name")
        if len(tag) > TAG_MAX_LEN:
            raise RunEditError("tags", f"tag {tag[:40]!r} is longer than {TAG_MAX_LEN} "
                                       "characters; shorten it")
        if not TAG_RE.match(tag):
            raise RunEditError("tags", f"tag {tag[:40]!r} may only use letters, digits and "
                                       "_ . : / + - (starting with a letter or digit)")
        if tag not in tags:
            tags.append(tag)
    if len(tags) > TAGS_MAX:
        raise RunEditError("tags", f"{len(tags)} tags given; a run takes at most {TAGS_MAX}")
    return tags


def check_text(field_name: str, value: str, limit: int, multiline: bool) -> str:
    allowed = "\t\n\r" if multiline else "\t"
    if any((ord(c) < 32 and c not in allowed) or c == "\x7f" for c in value):
        raise RunEditError(field_name, "contains a control character; give plain text")
    if len(value) > limit:
        raise RunEditError(field_name, f"is {len(value)} characters long; the limit is "
                                       f"{limit}")
    return value


def apply_edit(job: Job, name: str | None = None, notes: str | None = None,
               tags: str | list[str] | None = None) -> Job:
    """Validate everything first, then change the job (nothing half-applied on an error)."""
    new_name = check_text("name", name.strip(), NAME_MAX, False) if name is not None else None
    new_notes = check_text("notes", notes, NOTES_MAX, True) if notes is not None else None
    new_tags = parse_tags(tags) if tags is not None else None
    if new_name is not None:
        job.name = new_name
    if new_notes is not None:
        job.notes = new_notes
    if new_tags is not None:
        job.tags = new_tags
    return job
