"""POST /api/models/download: a hub model downloaded by a job (issue 15).

    {"repo_id": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main", "timeout_s": 10}
    (revision and timeout_s optional)

201: {"job": the download job, "check": the pre-check (files, sizes, free disk, the planner's
verdict)}; the job's page (/jobs/{id}) follows it. 200 {"cached": true, ...}: the files are
in the cache already, nothing to download. Refusals say why and what to do: 422 a bad id or
revision, or a repo without loadable weights; 404 no such repo (or private); 403 gated; 409
not enough free disk (with the numbers) or the same model downloading already; 503 the hub
cannot be reached (offline), 504 it did not answer. A plain ``def``: FastAPI runs it in a
worker thread, so the hub's answer never blocks the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.hub.download import HubRefusal
from app.jobs.hub_download import start_download
from app.models import JobPublic
from app.web.deps import SessionDep, SettingsDep, SupervisorDep

router = APIRouter(tags=["models"])


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo_id: str = Field(max_length=200, description="The hub id, owner/name")
    revision: str | None = Field(default=None, max_length=200,
                                 description="A branch, tag or commit; default main")
    timeout_s: int = Field(default=10, ge=1, le=600, description="Seconds without a byte "
                           "from the hub before a file's download fails")


@router.post("/api/models/download", status_code=201)
def download(body: DownloadRequest, session: SessionDep, settings: SettingsDep,
             supervisor: SupervisorDep) -> JSONResponse:
    try:
        status, answer = start_download(session, settings, body.repo_id, body.revision,
                                        body.timeout_s)
    except HubRefusal as exc:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message,
                                                             **exc.facts})
    if status == 201:
        supervisor.wake()
        answer["job"] = JobPublic.model_validate(answer["job"]).model_dump(mode="json")
    return JSONResponse(status_code=status, content=answer)
