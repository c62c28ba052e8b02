"""/api/feedback: rated answers over REST (app/feedback/).

- ``POST /api/feedback``: rate a stored answer by its id ``{"completion_id", "label",
  "note"?, "correction"?}``, or one given in full ``{"model", "messages", "answer", "label",
  "sampling"?, "note"?, "correction"?}``. A correction gives two rows: the answer 👎 and
  the correction 👍 (source "correction"). → 201 ``{"items": [...]}``.
- ``GET /api/feedback`` (filters, ``limit``, ``offset``; ``X-Total-Count``), ``GET
  /api/feedback/counts``, ``GET|PATCH|DELETE /api/feedback/{id}``.
- ``POST /api/feedback/dataset``: a KTO dataset of the rows (``ids`` or the filters),
  registered like an upload; → 201 the dataset and its ``train_url``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.errors import JobInputError
from app.feedback import store
from app.feedback.dataset import dataset_json, make_dataset
from app.feedback.store import FeedbackFilter
from app.models import Feedback
from app.web.deps import DB_INT_MAX, SessionDep, SettingsDep

FIELDS = {  # what each body takes, for the message about a field it does not
    ("POST", "/api/feedback"): "completion_id, label, note and correction (or model, "
                               "messages, answer, label, sampling, note and correction)",
    ("PATCH", "/api/feedback/{feedback_id}"): "label and note",
    ("POST", "/api/feedback/dataset"): "name, ids, merge_with and the filters model, "
                                       "variant, job_id, label, source, since and until",
}


class FeedbackRoute(APIRoute):
    """An unknown body field is named with the fields this route takes (app.main's message
    names a job's)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        taken = next((FIELDS[(m, self.path)] for m in self.methods or ()
                      if (m, self.path) in FIELDS), None)

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                extra = [e for e in exc.errors() if e.get("type") == "extra_forbidden"]
                if extra and taken:
                    field = ".".join(str(p) for p in extra[0].get("loc", ())[1:])
                    raise JobInputError(field, f"unknown field {field!r}; this takes {taken}"
                                        ) from None
                raise

        return run


router = APIRouter(prefix="/api/feedback", tags=["feedback"], route_class=FeedbackRoute)


# --- shapes ------------------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class FeedbackCreate(BaseModel):
    """A rating: of a stored answer (``completion_id``) or of one given in full."""

    model_config = ConfigDict(extra="forbid")
    completion_id: str | None = Field(default=None, min_length=1, max_length=64,
                                      description="The answer's id (chatcmpl-…) as /v1 gave it.")
    model: str | None = Field(default=None, min_length=1, max_length=1000,
                              description="The catalog id that answered: <base> or <base>@job-N.")
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=1000,
                                               description="The conversation up to the answer.")
    answer: str | None = Field(default=None, max_length=200_000)
    label: bool = Field(description="true: a good answer (👍); false: a bad one (👎).")
    sampling: dict[str, Any] | None = None
    note: str | None = Field(default=None, max_length=4000)
    correction: str | None = Field(default=None, max_length=200_000,
                                   description="What the answer should have said.")

    @model_validator(mode="after")
    def _one_way(self) -> FeedbackCreate:
        given = [k for k in ("model", "messages", "answer") if getattr(self, k) is not None]
        if self.completion_id is not None and (given or self.sampling is not None):
            raise ValueError("give either completion_id (a stored answer) or model, messages "
                             "and answer, not both")
        if self.completion_id is None and len(given) < 3:
            missing = [k for k in ("model", "messages", "answer") if k not in given]
            raise ValueError(f"give completion_id (the answer's chatcmpl-… id), or model, "
                             f"messages and answer (missing: {', '.join(missing)})")
        return self


class FeedbackPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: bool | None = None
    note: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _something(self) -> FeedbackPatch:
        if self.label is None and self.note is None:
            raise ValueError("give label (true or false) or note to change")
        return self


def utc(value: datetime | None) -> datetime | None:
    """A time in UTC (a time given without a zone is UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Filters(BaseModel):
    model: str | None = Field(default=None, max_length=1000)
    variant: str | None = Field(default=None, max_length=1000)
    job_id: int | None = Field(default=None, ge=1, le=DB_INT_MAX)
    label: bool | None = None
    source: Literal["playground", "correction", "arena", "api"] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def to_filter(self) -> FeedbackFilter:
        return FeedbackFilter(model=self.model or None, variant=self.variant or None,
                              job_id=self.job_id, label=self.label, source=self.source,
                              since=utc(self.since), until=utc(self.until))


class DatasetCreate(Filters):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="The new dataset's id.")
    ids: list[Annotated[int, Field(ge=1, le=DB_INT_MAX)]] | None = Field(
        default=None, max_length=100_000, description="Feedback ids; absent: the filters'.")
    merge_with: str | None = Field(default=None, min_length=1, max_length=200,
                                   description="A KTO dataset whose rows come first.")

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class FeedbackPublic(BaseModel):
    id: int
    created_at: datetime
    model: str
    variant: str
    adapter: str
    job_id: int | None
    messages: list[dict[str, Any]]
    answer: str
    label: bool
    sampling: dict[str, Any]
    note: str
    source: str
    completion_id: str | None
    arena_pair_id: int | None

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


def public(row: Feedback) -> FeedbackPublic:
    return FeedbackPublic.model_validate(row, from_attributes=True)


def filters(model: Annotated[str | None, Query(max_length=1000)] = None,
            variant: Annotated[str | None, Query(max_length=1000)] = None,
            job_id: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
            label: bool | None = None,
            source: Literal["playground", "correction", "arena", "api"] | None = None,
            since: datetime | None = None, until: datetime | None = None) -> FeedbackFilter:
    return FeedbackFilter(model=model or None, variant=variant or None, job_id=job_id,
                          label=label, source=source, since=utc(since),
                          until=utc(until))


# --- routes ------------------------------------------------------------------------------------
@router.post("", status_code=201)
def create_feedback(body: FeedbackCreate, session: SessionDep,
                    settings: SettingsDep) -> dict[str, list[FeedbackPublic]]:
    """Rate an answer; with ``correction`` the answer 👎 and the correction 👍."""
    if body.completion_id is not None:
        rows = store.from_completion(session, body.completion_id, body.label, body.note,
                                     body.correction)
    else:
        rows = store.explicit(session, settings, body.model or "",
                              [m.model_dump() for m in body.messages or []], body.answer or "",
                              body.label, body.sampling, body.note or "", body.correction)
    return {"items": [public(r) for r in rows]}


@router.get("")
def list_feedback(response: Response, session: SessionDep,
                  model: Annotated[str | None, Query(max_length=1000)] = None,
                  variant: Annotated[str | None, Query(max_length=1000)] = None,
                  job_id: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
                  label: bool | None = None,
                  source: Literal["playground", "correction", "arena", "api"] | None = None,
                  since: datetime | None = None, until: datetime | None = None,
                  limit: Annotated[int, Query(ge=1, le=store.MAX_LIMIT)] = 50,
                  offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0
                  ) -> list[FeedbackPublic]:
    """Newest first; ``X-Total-Count`` says how many match."""
    flt = filters(model, variant, job_id, label, source, since, until)
    rows, total = store.list_feedback(session, flt, limit, offset)
    response.headers["X-Total-Count"] = str(total)
    return [public(r) for r in rows]


@router.get("/counts")
def feedback_counts(session: SessionDep,
                    model: Annotated[str | None, Query(max_length=1000)] = None,
                    variant: Annotated[str | None, Query(max_length=1000)] = None,
                    job_id: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
                    label: bool | None = None,
                    source: Literal["playground", "correction", "arena", "api"] | None = None,
                    since: datetime | None = None, until: datetime | None = None
                    ) -> dict[str, Any]:
    """{total, desirable, undesirable, by_variant: {variant: {desirable, undesirable}}}."""
    return store.counts(session, filters(model, variant, job_id, label, source, since, until))


@router.post("/dataset", status_code=201)
async def feedback_dataset(body: DatasetCreate, session: SessionDep,
                           settings: SettingsDep) -> dict[str, Any]:
    """A registered KTO dataset of the rows (``ids``, else the filters), after the rows of
    ``merge_with`` when given: the same JSON as POST /api/datasets, and ``train_url``."""
    entry, url = await run_in_threadpool(make_dataset, session, settings, body.name, body.ids,
                                         body.to_filter(), body.merge_with)
    return dataset_json(entry, url)


@router.get("/{feedback_id}")
def get_feedback(feedback_id: int, session: SessionDep) -> FeedbackPublic:
    return public(store.get(session, feedback_id))


@router.patch("/{feedback_id}")
def patch_feedback(feedback_id: int, body: FeedbackPatch, session: SessionDep) -> FeedbackPublic:
    """Change the label (flip a rating) or the note."""
    return public(store.update(session, feedback_id, body.label, body.note))


@router.delete("/{feedback_id}", status_code=204)
def delete_feedback(feedback_id: int, session: SessionDep) -> Response:
    store.delete(session, feedback_id)
    return Response(status_code=204)
