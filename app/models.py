"""Tables and API shapes: one model family per table (JobBase / Job / JobCreate / JobPublic)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, field_validator
from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    """Where a job is in its life.

    queued       waiting in the FIFO queue for a free slot
    starting     the supervisor has started the worker; no event read yet
    running      the worker has reported at least one event
    succeeded    the worker said done/succeeded; the adapter is saved
    failed       the worker said done/failed, or exited without saying done
    cancelled    cancelled by a person: before it started, or the worker saved and stopped
    interrupted  the server found the worker gone without a done event (e.g. after a restart)
    """

    queued = "queued"
    starting = "starting"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self in (JobStatus.starting, JobStatus.running)


FINAL_STATUSES = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.interrupted}
)

# The only moves the lifecycle allows (docs/design.md, "Job lifecycle"); anything else is a bug.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.starting, JobStatus.cancelled}),
    JobStatus.starting: frozenset(
        {JobStatus.running, JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled,
         JobStatus.interrupted}
    ),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.interrupted}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset({JobStatus.queued}),
    JobStatus.cancelled: frozenset({JobStatus.queued}),
    JobStatus.interrupted: frozenset({JobStatus.queued}),
}


class JobBase(SQLModel):
    name: str = Field(default="", max_length=200)
    backend: str = Field(max_length=20)
    method: str = Field(max_length=20)
    model: str = Field(max_length=1000)
    dataset: str = Field(max_length=1000)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Job(JobBase, table=True):
    # An id names one run forever (its folder too): never reused after a delete (0005).
    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True)
    status: JobStatus = Field(default=JobStatus.queued, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    phase: str | None = None
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    error_type: str | None = None
    error: str | None = None
    hint: str | None = None
    log_tail: str | None = None
    exit_code: int | None = None
    run_dir: str = ""
    model_path: str = ""
    dataset_path: str = ""
    adapter_path: str | None = None
    last_checkpoint: str | None = None
    summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    pid: int | None = None
    pid_started_at: float | None = None
    cancel_requested_at: datetime | None = None
    events_offset: int = 0
    last_seq: int = 0
    notes: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    tags: list[str] = Field(default_factory=list,
                            sa_column=Column(JSON, nullable=False, server_default="[]"))
    # tune: auto: the worker's choice and what it tried (app/jobs/tuning.py); None untuned.
    tuning: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class JobCreate(JobBase):
    """What a script posts to create a job. Unknown top-level fields are refused."""

    model_config = ConfigDict(extra="forbid")
    backend: str = "torch"
    method: str = "kto"
    force: bool = False  # start even when the memory planner says it won't fit (not stored)

    @field_validator("name", "model", "dataset")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        # A NUL cannot be in a path (resolving one raises); no name needs the others either.
        if any(ord(c) < 32 and c not in "\t\n\r" or c == "\x7f" for c in value):
            raise ValueError("contains a control character; give plain text")
        # The API refuses these before parsing (app/body_check.py); a script calling
        # validate_job directly gets the same answer rather than an error from SQLite.
        if not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value):
            raise ValueError("contains a lone surrogate (e.g. \\ud800), which is not text; "
                             "send valid Unicode")
        return value


class JobPublic(JobBase):
    id: int
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    phase: str | None
    step: int
    total_steps: int | None
    epoch: float | None
    tokens_per_s: float | None
    eta_s: float | None
    error_type: str | None
    error: str | None
    hint: str | None
    log_tail: str | None
    exit_code: int | None
    run_dir: str
    model_path: str
    dataset_path: str
    adapter_path: str | None
    last_checkpoint: str | None
    summary: dict[str, Any] | None
    pid: int | None
    last_seq: int
    notes: str
    tags: list[str]
    tuning: dict[str, Any] | None = None


class Metric(SQLModel, table=True):
    """One number a worker logged at a step; (job, seq, name) is unique, so ingestion is
    idempotent."""

    __table_args__ = (
        UniqueConstraint("job_id", "seq", "name"),
        Index("ix_metric_columnar", "job_id", "name", "step", "seq", "value"),
    )
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", ondelete="CASCADE")
    seq: int
    step: int
    name: str = Field(max_length=200)
    value: float | None


class Event(SQLModel, table=True):
    """Every protocol event as the worker wrote it, for SSE replay and for finished jobs."""

    job_id: int = Field(foreign_key="job.id", primary_key=True, ondelete="CASCADE")
    seq: int = Field(primary_key=True)
    t: float
    type: str = Field(max_length=20)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ModelEntry(SQLModel, table=True):
    """A registered base model: the demo, a local folder, a fused model, a model converted
    for MLX, a hub model downloaded by a job (source: demo, local, fused, converted, hub;
    a hub one's id is its hub id, its path the cache's snapshot folder)."""

    __tablename__ = "model_entry"
    id: str = Field(primary_key=True, max_length=200)
    path: str
    source: str = Field(default="local", max_length=20)
    created_at: datetime = Field(default_factory=utcnow)


class DatasetEntry(SQLModel, table=True):
    """A registered dataset: ``path`` is the normalised JSONL the workers read (for a file
    registered before migration 0003, the file itself); the original is kept beside it.

    kind     kto (labelled or paired rows: trains KTO, and SFT on its desirable rows) or sft
    format   the shape detected: kto, kto-conversational, paired, sft-text, sft-prompt-
             completion, sft-messages
    source   upload, path, hub or demo
    stats    counts, suggested KTO weights and the file's problems
    """

    __tablename__ = "dataset_entry"
    id: str = Field(primary_key=True, max_length=200)
    path: str
    format: str = Field(default="kto", max_length=40)
    rows: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    name: str = Field(default="", max_length=200, sa_column_kwargs={"server_default": ""})
    source: str = Field(default="path", max_length=20,
                        sa_column_kwargs={"server_default": "path"})
    kind: str = Field(default="kto", max_length=20, sa_column_kwargs={"server_default": "kto"})
    original_filename: str | None = Field(default=None, max_length=255)
    original_path: str | None = None
    size_bytes: int | None = None
    stats: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class Completion(SQLModel, table=True):
    """An answer the server gave (playground or /v1), kept so it can be rated by its id: the
    rating then carries what really wrote it, not what a client says did."""

    id: str = Field(primary_key=True, max_length=64)  # chatcmpl-…, the reply's own id
    created_at: datetime = Field(default_factory=utcnow, index=True)
    model: str = Field(max_length=1000)  # the catalog id asked for: <base> or <base>@job-N
    messages: list[dict[str, Any]] = Field(default_factory=list,
                                           sa_column=Column(JSON, nullable=False))
    answer: str = Field(default="", sa_column=Column(Text, nullable=False))
    sampling: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    finish_reason: str = Field(default="stop", max_length=20)


class Feedback(SQLModel, table=True):
    """One rated answer: the conversation up to it, the answer, 👍 (label true) or 👎, and
    what wrote it. A correction is stored as two rows: the original 👎, the correction 👍."""

    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    model: str = Field(max_length=1000, index=True)  # the base model's id
    variant: str = Field(max_length=1000)  # the catalog id that answered (<base>@job-N, …)
    adapter: str = Field(default="", max_length=4000)  # the adapter folder; "" for none
    job_id: int | None = Field(default=None, index=True)  # the adapter's run (no cascade)
    messages: list[dict[str, Any]] = Field(default_factory=list,
                                           sa_column=Column(JSON, nullable=False))
    answer: str = Field(default="", sa_column=Column(Text, nullable=False))
    label: bool = Field(index=True)
    sampling: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    note: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    source: str = Field(default="playground", max_length=20)  # playground|correction|arena|api
    completion_id: str | None = Field(default=None, max_length=64, index=True)
    arena_pair_id: int | None = Field(default=None, index=True)


class Arena(SQLModel, table=True):
    """A blind review of two variants on the same prompts; its answers come from a generate
    job (``job_id``) and are copied into ArenaPair rows when that job succeeds."""

    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    job_id: int = Field(foreign_key="job.id", ondelete="CASCADE", index=True)
    variant_a: str = Field(max_length=1000)  # catalog ids, as /v1/models lists them
    variant_b: str = Field(max_length=1000)
    source: str = Field(default="", max_length=1000)  # what the prompts are, in words
    source_job_id: int | None = Field(default=None, index=True)  # the run whose split it used
    n: int = 0
    seed: int = 0


class ArenaPair(SQLModel, table=True):
    """One prompt of an arena with both answers; ``a_on_left`` is the blind, seeded shuffle;
    the verdict is stored in variant terms: a | b | both_good | both_bad."""

    __tablename__ = "arena_pair"
    __table_args__ = (UniqueConstraint("arena_id", "index"),)
    id: int | None = Field(default=None, primary_key=True)
    arena_id: int = Field(foreign_key="arena.id", ondelete="CASCADE", index=True)
    index: int
    messages: list[dict[str, Any]] = Field(default_factory=list,
                                           sa_column=Column(JSON, nullable=False))
    answer_a: str = Field(default="", sa_column=Column(Text, nullable=False))
    answer_b: str = Field(default="", sa_column=Column(Text, nullable=False))
    a_on_left: bool = True
    verdict: str | None = Field(default=None, max_length=20)
    judged_at: datetime | None = None
