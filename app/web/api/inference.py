"""The loaded models: GET /api/inference (what is loaded, its memory, the last unload) and
POST /api/inference/unload. The workers themselves are app/inference/manager.py's."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.inference.manager import InferenceManager

router = APIRouter(prefix="/api/inference", tags=["inference"])


def get_inference(request: Request) -> InferenceManager:
    return request.app.state.inference


InferenceDep = Annotated[InferenceManager, Depends(get_inference)]


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, max_length=1200, description="A model id (base "
                              "or adapter: its base is unloaded) or path; null: all.")
    backend: Literal["torch", "mlx"] | None = None


@router.get("")
def inference(manager: InferenceDep) -> dict[str, Any]:
    """{idle_timeout_s, workers: [{backend, model, model_path, device, dtype, pid,
    memory_bytes, load_s, loaded_at, last_used_at, busy, waiting, adapters, state}],
    last_unload: {model, backend, reason, at} | null}"""
    return manager.snapshot()


@router.post("/unload")
async def unload(manager: InferenceDep, body: UnloadRequest | None = None) -> dict[str, Any]:
    """Stop the worker(s) holding ``model`` (null: every loaded model); a generation in
    progress on it ends with an error. {unloaded: [{model, backend}]}"""
    body = body or UnloadRequest()
    done = await run_in_threadpool(manager.unload, body.model, body.backend)
    return {"unloaded": done}
