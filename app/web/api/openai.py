"""The OpenAI-compatible API: GET /v1/models and POST /v1/chat/completions (streaming and
not), over the inference workers. Model ids: ``<base>`` and ``<base>@job-<N>`` (README,
"Playground"). Every error under /v1 has OpenAI's shape (app/main.py's handlers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from app.inference.chat import ClientGone, answer, open_chat, stream
from app.inference.errors import InferenceError
from app.inference.openai_shapes import ChatRequest
from app.web.api.inference import InferenceDep

router = APIRouter(prefix="/v1", tags=["openai"])
CLIENT_CLOSED = 499  # nginx's: the client went away before the answer (nobody reads it)


@router.get("/models")
async def models(manager: InferenceDep) -> dict[str, Any]:
    """Every base model, fused model and adapter as a model id, adapters newest first;
    ``prospect`` says which kind, its base, backend, job and whether it is loaded."""
    return {"object": "list", "data": await run_in_threadpool(manager.models)}


@router.get("/models/{model_id:path}")
async def model(model_id: str, manager: InferenceDep) -> dict[str, Any]:
    found = [m for m in await run_in_threadpool(manager.models) if m["id"] == model_id]
    if not found:
        await run_in_threadpool(manager.resolve, model_id)  # its 404 names what exists
        raise InferenceError(404, f"{model_id!r} is not in the model list; GET /v1/models",
                             "model_not_found", "model")
    return found[0]


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request,
                           manager: InferenceDep) -> dict[str, Any] | Response:
    """OpenAI's chat completion. ``stream: true`` answers ``data: {chunk}`` lines ending with
    ``data: [DONE]``; an error after the stream began is a ``data: {"error": …}`` line. The
    answer carries ``prospect`` {ttft_s, tokens_per_s, seconds, backend, device,
    finish_reason}. Extension: ``backend`` ("torch" | "mlx") picks the worker of a base
    model. A closed connection cancels the generation."""
    chat = await open_chat(manager, body)
    gone = request.is_disconnected
    try:
        if not body.stream:
            return await answer(chat, gone)
        await chat.started(gone)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return StreamingResponse(stream(chat, gone), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
