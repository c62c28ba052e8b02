"""One chat completion through a worker: submitted, read reply by reply, cancelled when the
client goes away. The routes in app/web/api/openai.py turn it into OpenAI's answer or stream.

Every answer is kept as a Completion row under its reply id (chatcmpl-…) when it ends,
finished, cut by max_tokens or by a client that left, so it can be rated by that id
(app/feedback/). The newest ``KEEP_COMPLETIONS`` are kept. The write runs in a thread, and a
failed write is logged: it never breaks the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

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
from app.models import Completion
from contract.inference import generate_request

POLL_S = 0.5  # how often a wait checks whether the client is still there
KEEP_COMPLETIONS = 10_000  # answers kept for rating; older ones are pruned on insert
Disconnected = Callable[[], Awaitable[bool]]
log = logging.getLogger("prospect.inference")


class ClientGone(Exception):
    """The client closed the connection; the generation was cancelled."""


class Chat:
    def __init__(self, body: ChatRequest, worker: InferenceWorker, req: Request, backend: str,
                 cid: str, engine: Engine | None = None, model_id: str | None = None):
        self.body = body
        self.worker = worker
        self.req = req
        self.backend = backend
        self.cid = cid
        self.created = int(time.time())
        self.engine = engine  # where the answer is kept (None: not kept)
        self.model_id = model_id or body.model.strip()  # the catalog id asked for
        self._getter: asyncio.Future | None = None
        self._kept = False

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

    # --- keeping the answer -----------------------------------------------------------------
    def _row(self, text: str, finish_reason: str | None) -> Completion | None:
        if self.engine is None or self._kept:
            return None
        self._kept = True
        return Completion(id=self.cid, model=self.model_id[:1000],
                          messages=self.body.worker_messages(), answer=text,
                          sampling=self.body.sampling(),
                          finish_reason=(finish_reason or "stop")[:20])

    async def keep(self, text: str, finish_reason: str | None) -> None:
        """Store the answer before the client gets its end, so it can be rated at once."""
        row = self._row(text, finish_reason)
        if row is not None:
            await asyncio.to_thread(save_completion, self.engine, row)

    def keep_later(self, text: str, finish_reason: str | None) -> None:
        """Store what was said without waiting: for a client that left (or a cancelled
        task, which cannot await any more). Nothing said: nothing to rate."""
        row = self._row(text, finish_reason) if text else None
        if row is not None:
            with contextlib.suppress(RuntimeError):  # no loop any more: the server stops
                asyncio.get_running_loop().run_in_executor(None, save_completion,
                                                           self.engine, row)


def save_completion(engine: Engine, row: Completion, keep: int = KEEP_COMPLETIONS) -> None:
    """Insert the answer and prune all but the newest ``keep``. Never raises: a failed
    write costs the rating of this answer, not the answer."""
    try:
        with Session(engine) as session:
            session.add(row)
            session.commit()
            if session.exec(select(func.count()).select_from(Completion)).one() > keep:
                old = select(Completion.id).order_by(col(Completion.created_at).desc(),
                                                     col(Completion.id).desc()).offset(keep)
                session.exec(delete(Completion).where(col(Completion.id).in_(old)))
                session.commit()
    except Exception:  # noqa: BLE001 - any database trouble: log it, the answer stands
        log.exception("could not store answer %s for rating", row.id)


async def open_chat(manager: InferenceManager, body: ChatRequest) -> Chat:
    target = await asyncio.to_thread(manager.resolve, body.model, body.backend)
    cid = completion_id()
    message = generate_request(cid, body.worker_messages(), target.adapter, **body.sampling())
    worker, req = await manager.submit(target, message)
    return Chat(body, worker, req, target.backend, cid, getattr(manager, "engine", None),
                target.id)


async def answer(chat: Chat, gone: Disconnected | None = None) -> dict[str, Any]:
    """The whole answer as one chat.completion."""
    parts: list[str] = []
    try:
        await chat.started(gone)
        while True:
            reply = await chat.reply(gone)
            kind = reply.get("type")
            if kind == "token":
                parts.append(str(reply.get("text") or ""))
            elif kind == "error":
                raise from_reply(reply)
            elif kind == "done":
                await chat.keep("".join(parts), reply.get("finish_reason"))
                return completion(chat.cid, chat.body.model, "".join(parts), reply,
                                  chat.backend, chat.device, chat.created)
    except InferenceError:
        chat.cancel()
        raise
    except BaseException:
        chat.cancel()  # a client gone, a server stopping: the worker stops too
        chat.keep_later("".join(parts), "cancelled")
        raise


async def stream(chat: Chat, gone: Disconnected | None = None) -> AsyncIterator[bytes]:
    """The answer as SSE chunks: the role, the text as it comes, the finish (with our stats
    and the usage), the usage alone when asked, then [DONE]. Call after ``chat.started``."""
    model, cid, created = chat.body.model, chat.cid, chat.created
    finished = False
    said: list[str] = []
    try:
        yield sse(chunk(cid, model, created, {"role": "assistant", "content": ""}))
        while True:
            try:
                reply = await chat.reply(gone)
            except ClientGone:
                chat.keep_later("".join(said), "cancelled")
                return
            kind = reply.get("type")
            if kind == "token":
                text = str(reply.get("text") or "")
                if text:
                    said.append(text)
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
                    chat.keep_later("".join(said), "cancelled")
                    return
                await chat.keep("".join(said), reply.get("finish_reason"))
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
            chat.keep_later("".join(said), "cancelled")  # closed mid-answer


__all__ = ["Chat", "ClientGone", "InferenceError", "answer", "open_chat", "stream"]
