"""The REST contract (docs/design.md): thin handlers over app.jobs.service and app.jobs.metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlmodel import Session, select

from app.db import SessionDep
from app.jobs import history as runs
from app.jobs.lifecycle import delete_job, request_cancel, request_resume
from app.jobs.metrics import columnar
from app.jobs.service import create_job
from app.models import Event, Job, JobCreate, JobPublic, JobStatus, ModelEntry
from contract.events import LOG_FILE
from contract.knobs import METHODS

router = APIRouter(prefix="/api")
DB_INT_MAX = 2**63 - 1  # SQLite's INTEGER: a larger number in a query is a 422, not a 500
JobId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="The job's id.")]


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return job


@router.post("/jobs", status_code=201, response_model=JobPublic)
def create(data: JobCreate, session: SessionDep, request: Request) -> Job:
    job = create_job(session, data, request.app.state.settings)
    request.app.state.supervisor.wake()
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
    """Newest first unless `sort` says otherwise (app/jobs/history.py); X-Total-Count gives how many
    jobs match the filters in all, for paging."""
    query = runs.JobQuery(status=status, backend=backend, method=method, model=model,
                          tag=tag, q=q, sort=sort, order=order, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(runs.count_jobs(session, query))
    return [row.job for row in runs.list_jobs(session, query)]


@router.get("/jobs/{job_id}", response_model=JobPublic)
def read_job(job_id: JobId, session: SessionDep) -> Job:
    return get_job(session, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel(job_id: JobId, session: SessionDep, request: Request) -> Job:
    job = request_cancel(session, get_job(session, job_id))
    if job.status.is_active:
        request.app.state.supervisor.cancel_now(job)
    return job


@router.post("/jobs/{job_id}/resume", response_model=JobPublic)
def resume(job_id: JobId, session: SessionDep, request: Request) -> Job:
    job = request_resume(session, get_job(session, job_id))
    request.app.state.supervisor.wake()
    return job


@router.delete("/jobs/{job_id}", status_code=204)
def delete(job_id: JobId, session: SessionDep, request: Request) -> Response:
    delete_job(session, get_job(session, job_id), request.app.state.settings)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/metrics")
def metrics(job_id: JobId, session: SessionDep, names: str | None = None,
            since_step: Annotated[int | None, Query(ge=-DB_INT_MAX, le=DB_INT_MAX)] = None,
            max_points: Annotated[int | None, Query(ge=10, le=100_000)] = None) -> dict:
    get_job(session, job_id)
    wanted = [n for n in (names or "").split(",") if n] or None
    return columnar(session, job_id, wanted, since_step, max_points)


@router.get("/jobs/{job_id}/logs")
def logs(job_id: JobId, session: SessionDep, offset: int = 0,
         limit: Annotated[int, Query(ge=1, le=1_048_576)] = 65536) -> dict:
    """Bytes of worker.log from ``offset``; a negative offset counts from the end."""
    job = get_job(session, job_id)
    path = FilePath(job.run_dir) / LOG_FILE if job.run_dir else None  # None: never launched
    size = path.stat().st_size if path and path.is_file() else 0
    start = max(0, size + offset) if offset < 0 else min(offset, size)
    data = b""
    if size:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(limit)
    return {"offset": start, "next_offset": start + len(data), "size": size,
            "text": data.decode("utf-8", errors="replace")}


def _events_after(engine, job_id: int, after: int, limit: int = 500) -> tuple[list, bool]:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        rows = session.exec(select(Event).where(Event.job_id == job_id, Event.seq > after)
                            .order_by(Event.seq).limit(limit)).all()
        finished = job is None or (job.status.is_final and job.pid is None)
        return [(e.seq, e.type, {"seq": e.seq, "t": e.t, "type": e.type, **e.data})
                for e in rows], finished


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 204: {}})
async def events(job_id: JobId, request: Request, session: SessionDep,
                 after: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
                 last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """Server-sent events: every protocol event of the job, `id` = its seq. Resumable with
    Last-Event-ID (or ?after=seq). Ends after a finished job's last event; a reconnect then
    gets 204, which tells EventSource to stop."""
    get_job(session, job_id)
    # The stream may stay open for hours: give the connection back to the pool now, or a
    # few more live pages than the pool has connections would starve every request.
    session.close()
    if last_event_id and last_event_id.isascii() and last_event_id.isdigit():
        after = max(after, min(int(last_event_id), DB_INT_MAX))
    engine, supervisor = request.app.state.engine, request.app.state.supervisor
    first, finished = await asyncio.to_thread(_events_after, engine, job_id, after)
    if finished and not first:
        return Response(status_code=204)

    async def stream():
        nonlocal after
        batch, done = first, finished
        yield "retry: 2000\n\n"
        while True:
            for seq, etype, payload in batch:
                yield f"id: {seq}\nevent: {etype}\ndata: {json.dumps(payload)}\n\n"
                after = seq
            if batch:
                batch, done = await asyncio.to_thread(_events_after, engine, job_id, after)
                continue
            if done or await request.is_disconnected():
                return
            if not await supervisor.wait_for_change(timeout=15):
                yield ": keep-alive\n\n"
            batch, done = await asyncio.to_thread(_events_after, engine, job_id, after)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


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


