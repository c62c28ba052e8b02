"""The memory planner over HTTP: ``POST /api/plan`` for scripts (the job form's plan panel is
app/web/pages/plan.py).

A plan needs the model and the knobs, not the dataset: the body is a job body (as for
``POST /api/jobs``) and the name, dataset and force fields are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from app.jobs.planning import plan_for
from app.planner.check import presets
from app.web.deps import SessionDep, SettingsDep

router = APIRouter(tags=["plan"])


class PlanRequest(BaseModel):
    """A job body; only backend, method, model and params matter to the plan."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    backend: str = "torch"
    method: str = "kto"
    model: str
    dataset: str = ""
    params: dict[str, Any] = {}
    force: bool = False


@router.post("/api/plan")
async def api_plan(body: PlanRequest, session: SessionDep,
                   settings: SettingsDep) -> dict[str, Any]:
    """Peak memory estimate, broken down, against this machine's budget: verdict (fits,
    tight, won't fit, or unknown when the model cannot be read) and, unless it fits, the
    first change that makes it fit."""
    return await run_in_threadpool(plan_for, session, settings, body.backend, body.method,
                                   body.model, body.params)


@router.get("/api/plan/presets")
def api_presets() -> list[dict[str, Any]]:
    """Starting points from the seed guide's tables (an M4 with 24 GiB), both backends."""
    return presets()
