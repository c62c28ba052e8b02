"""The jobs REST contract (docs/design.md): thin handlers over app.jobs (service, lifecycle,
history, metrics, stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from app.jobs import history as runs
from app.jobs.generate import create_generate
from app.jobs.lifecycle import delete_job, request_cancel, request_resume
from app.jobs.metrics import columnar
from app.jobs.scale_checks import resume_params
from app.jobs.service import create_job
from app.jobs.stream import events_after, read_log
from app.models import Job, JobCreate, JobPublic, JobStatus, ModelEntry
from app.web.deps import DB_INT_MAX, JobDep, SessionDep, SettingsDep, SupervisorDep
from contract.knobs import METHODS

router = APIRouter(prefix="/api")
RETRY_MS = 2000  # how soon EventSource reconnects after a dropped connection
KEEPALIVE_S = 15  # a comment this often keeps proxies from closing an idle stream


@router.post("/jobs", status_code=201, response_model=JobPublic)
def create(data: JobCreate, session: SessionDep, settings: SettingsDep,
           supervisor: SupervisorDep) -> Job:
    # A generate job (an arena's answers) has its own checks: a prompts file, two variants.
    make = create_generate if data.method == "generate" else create_job
    job = make(session, data, settings)
    supervisor.wake()
    return job


Text = Annotated[str | None, Query(max_length=1000)]


@router.get("/jobs", response_model=list[JobPublic])
def list_jobs(session: SessionDep, response: Response, status: JobStatus | None = None,
              backend: Text = None, method: Text = None, model: Text = None,
              tag: Text = None,
              q: Annotated[str | None, Query(
                  max_length=200, description="Text in the name or notes (any case)")] = None,
              sort: runs.SortKey = "created",
              order: Literal["asc", "desc"] | None = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0) -> list[Job]:
    """Newest first unless `sort` says otherwise; X-Total-Count gives how many
    jobs match the filters in all, for paging."""
    query = runs.JobQuery(status=status, backend=backend, method=method, model=model,
                          tag=tag, q=q, sort=sort, order=order, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(runs.count_jobs(session, query))
    return [row.job for row in runs.list_jobs(session, query)]


@router.get("/jobs/{job_id}", response_model=JobPublic)
def read_job(job: JobDep) -> Job:
    return job


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel(job: JobDep, session: SessionDep, supervisor: SupervisorDep) -> Job:
    job = request_cancel(session, job)
    if job.status.is_active:
        supervisor.cancel_now(job)
    return job


class ResumeBody(BaseModel):
    """A resume's optional body: other scale knobs for the rest of the run."""

    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(default_factory=dict)
    force: bool = False  # resume even when the planner says the new setting won't fit


@router.post("/jobs/{job_id}/resume", response_model=JobPublic)
def resume(job: JobDep, session: SessionDep, settings: SettingsDep,
           supervisor: SupervisorDep, body: ResumeBody | None = None) -> Job:
    body = body or ResumeBody()
    params = resume_params(job, body.params, settings, force=body.force)
    job = request_resume(session, job, params)
    supervisor.wake()
    return job


@router.delete("/jobs/{job_id}", status_code=204)
def delete(job: JobDep, session: SessionDep, settings: SettingsDep) -> Response:
    delete_job(session, job, settings)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/metrics")
def metrics(job: JobDep, session: SessionDep, names: str | None = None,
            since_step: Annotated[int | None, Query(ge=-DB_INT_MAX, le=DB_INT_MAX)] = None,
            max_points: Annotated[int | None, Query(ge=10, le=100_000)] = None) -> dict:
    wanted = [n for n in (names or "").split(",") if n] or None
    return columnar(session, job.id, wanted, since_step, max_points)


@router.get("/jobs/{job_id}/logs")
def logs(job: JobDep, offset: int = 0,
         limit: Annotated[int, Query(ge=1, le=1_048_576)] = 65536) -> dict:
    """Bytes of worker.log from ``offset``; a negative offset counts from the end."""
    return read_log(job, offset, limit)


def event_frame(seq: int, etype: str, payload: dict) -> bytes:
    """One event as this stream has always framed it: id, then event, then data. fastapi.sse's
    format_sse_event writes the id last, which the SSE spec allows, but scripts that read the
    stream line by line (bench/load.py among them) take the id first."""
    return f"id: {seq}\nevent: {etype}\ndata: {json.dumps(payload)}\n\n".encode()


# Documented through `responses` with no schema, as before: response_class=EventSourceResponse
# would add {"type": "string"} to /openapi.json. The handler returns an EventSourceResponse.
@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 204: {}})
async def events(job: JobDep, request: Request, session: SessionDep,
                 supervisor: SupervisorDep,
                 after: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
                 last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """Server-sent events: every protocol event of the job, `id` = its seq. Resumable with
    Last-Event-ID (or ?after=seq). Ends after a finished job's last event; a reconnect then
    gets 204, which tells EventSource to stop."""
    # The stream may stay open for hours: give the connection back to the pool now, or a
    # few more live pages than the pool has connections would starve every request.
    session.close()
    if last_event_id and last_event_id.isascii() and last_event_id.isdigit():
        after = max(after, min(int(last_event_id), DB_INT_MAX))
    engine, job_id = request.app.state.engine, job.id
    first, finished = await asyncio.to_thread(events_after, engine, job_id, after)
    if finished and not first:
        return Response(status_code=204)

    # Not a generator endpoint (FastAPI's `yield ServerSentEvent`): the 204 above must be
    # answered before any stream starts.
    async def stream() -> AsyncIterator[bytes]:
        nonlocal after
        batch, done = first, finished
        yield format_sse_event(retry=RETRY_MS)
        while True:
            for seq, etype, payload in batch:
                yield event_frame(seq, etype, payload)
                after = seq
            if batch:
                batch, done = await asyncio.to_thread(events_after, engine, job_id, after)
                continue
            if done or await request.is_disconnected():
                return
            if not await supervisor.wait_for_change(timeout=KEEPALIVE_S):
                yield format_sse_event(comment="keep-alive")
            batch, done = await asyncio.to_thread(events_after, engine, job_id, after)

    return EventSourceResponse(stream(), headers={"Cache-Control": "no-cache",
                                                  "X-Accel-Buffering": "no"})


@router.get("/methods")
def methods() -> list[dict]:
    """The knobs of each backend/method with defaults and help (what the form draws)."""
    return [{"backend": m.backend, "method": m.method,
             "params": [{"name": k.name, "type": k.type.__name__, "default": k.default,
                         "help": k.help, "group": k.group, "min": k.min, "max": k.max,
                         "choices": list(k.choices) if k.choices else None} for k in m.knobs]}
            for m in METHODS.values()]


@router.get("/models")
def models(session: SessionDep) -> list[ModelEntry]:
    return list(session.exec(select(ModelEntry).order_by(ModelEntry.id)))
