"""One chat completion through a worker: submitted, read reply by reply, cancelled when the
client goes away. The routes in app/web/api/openai.py turn it into OpenAI's answer or stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from app.inference.errors import InferenceError, from_reply
from app.inference.manager import InferenceManager
from app.inference.openai_shapes import (
    ChatRequest,
    chunk,
    completion,
    completion_id,
    sse,
    stats,
    usage,
)
from app.inference.worker import InferenceWorker, Request
from contract.inference import generate_request

POLL_S = 0.5  # how often a wait checks whether the client is still there
Disconnected = Callable[[], Awaitable[bool]]


class ClientGone(Exception):
    """The client closed the connection; the generation was cancelled."""


class Chat:
    def __init__(self, body: ChatRequest, worker: InferenceWorker, req: Request, backend: str,
                 cid: str):
        self.body = body
        self.worker = worker
        self.req = req
        self.backend = backend
        self.cid = cid
        self.created = int(time.time())
        self._getter: asyncio.Future | None = None

    @property
    def device(self) -> str | None:
        return self.worker.info.get("device")

    def cancel(self) -> None:
        if self._getter is not None:
            self._getter.cancel()
        self.worker.cancel(self.req)

    async def reply(self, gone: Disconnected | None = None) -> dict[str, Any]:
        """The next reply; ClientGone (after cancelling) when the client left meanwhile."""
        while True:
            if self._getter is None:
                self._getter = asyncio.ensure_future(self.req.queue.get())
            done, _ = await asyncio.wait({self._getter}, timeout=POLL_S)
            if done:
                reply, self._getter = self._getter.result(), None
                return reply
            if gone is not None and await gone():
                self.cancel()
                raise ClientGone()

    async def started(self, gone: Disconnected | None = None) -> dict[str, Any]:
        """Wait for ``start`` (the model is loaded, the prompt accepted and it is our turn);
        an ``error`` reply before it is raised as InferenceError (its status: 404, 422, …)."""
        reply = await self.reply(gone)
        if reply.get("type") == "error":
            raise from_reply(reply)
        if reply.get("type") == "done":  # cancelled while queued
            raise ClientGone()
        return reply


async def open_chat(manager: InferenceManager, body: ChatRequest) -> Chat:
    target = await asyncio.to_thread(manager.resolve, body.model, body.backend)
    cid = completion_id()
    message = generate_request(cid, body.worker_messages(), target.adapter, **body.sampling())
    worker, req = await manager.submit(target, message)
    return Chat(body, worker, req, target.backend, cid)


async def answer(chat: Chat, gone: Disconnected | None = None) -> dict[str, Any]:
    """The whole answer as one chat.completion."""
    try:
        await chat.started(gone)
        parts: list[str] = []
        while True:
            reply = await chat.reply(gone)
            kind = reply.get("type")
            if kind == "token":
                parts.append(str(reply.get("text") or ""))
            elif kind == "error":
                raise from_reply(reply)
            elif kind == "done":
                return completion(chat.cid, chat.body.model, "".join(parts), reply,
                                  chat.backend, chat.device, chat.created)
    except BaseException:
        chat.cancel()  # a client gone, a server stopping: the worker stops too
        raise


async def stream(chat: Chat, gone: Disconnected | None = None) -> AsyncIterator[bytes]:
    """The answer as SSE chunks: the role, the text as it comes, the finish (with our stats
    and the usage), the usage alone when asked, then [DONE]. Call after ``chat.started``."""
    model, cid, created = chat.body.model, chat.cid, chat.created
    finished = False
    try:
        yield sse(chunk(cid, model, created, {"role": "assistant", "content": ""}))
        while True:
            try:
                reply = await chat.reply(gone)
            except ClientGone:
                return
            kind = reply.get("type")
            if kind == "token":
                text = str(reply.get("text") or "")
                if text:
                    yield sse(chunk(cid, model, created, {"content": text}))
            elif kind == "error":
                finished = True
                err = from_reply(reply)
                yield sse({"error": {"message": err.message, "type": err.type,
                                     "param": err.param, "code": err.code}})
                break
            elif kind == "done":
                finished = True
                if reply.get("finish_reason") == "cancelled":  # nobody is reading any more
                    return
                use = usage(int(reply.get("prompt_tokens") or 0),
                            int(reply.get("completion_tokens") or 0))
                yield sse(chunk(cid, model, created, {}, reply.get("finish_reason"),
                                usage=use, prospect=stats(reply, chat.backend, chat.device)))
                if chat.body.stream_options and chat.body.stream_options.include_usage:
                    yield sse(chunk(cid, model, created, None, usage=use))
                break
        yield sse("[DONE]")
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                chat.cancel()


__all__ = ["Chat", "ClientGone", "InferenceError", "answer", "open_chat", "stream"]
