"""One inference worker process (app/inference/worker.py) over the fake worker: replies
bridged to asyncio, FIFO, cancel, death before and after loading, stop."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from app.inference.openai_shapes import ChatRequest, validation_error
from app.inference.worker import InferenceWorker, Request
from contract.inference import generate_request
from tests.helpers import ROOT

FAKE = [sys.executable, str(ROOT / "tests" / "fake_inference_worker.py")]


def make(tmp_path, model: str = "m") -> InferenceWorker:
    w = InferenceWorker("torch", str(tmp_path / model), model,
                        [*FAKE, "-m", "workers.torch.serve", "--model", str(tmp_path / model)],
                        tmp_path / "w.log", dict(os.environ), cwd=ROOT)
    w.start()
    return w


async def replies(req: Request) -> list[dict]:
    out = []
    while True:
        out.append(await asyncio.wait_for(req.queue.get(), 20))
        if out[-1]["type"] in ("done", "error"):
            return out


def ask(w: InferenceWorker, rid: str, text: str, **kw) -> Request:
    req = Request(rid, generate_request(rid, [{"role": "user", "content": text}], **kw),
                  asyncio.get_running_loop())
    w.submit(req)
    return req


def test_fifo_answers_and_cancel(tmp_path):
    async def main():
        w = make(tmp_path)
        try:
            a = ask(w, "a", "SLOW one two three")
            b = ask(w, "b", "queued then dropped")
            c = ask(w, "c", "LONG SLOW", max_tokens=1000)
            assert w.waiting >= 2  # a waits for the load, the others for a
            w.cancel(b)  # never sent: answered at once
            got_a = await replies(a)
            assert [r["type"] for r in got_a] == ["start", *["token"] * 5, "done"]
            assert "".join(r["text"] for r in got_a if r["type"] == "token") == \
                "base: SLOW one two three"
            assert (await replies(b))[-1]["finish_reason"] == "cancelled"
            first = await asyncio.wait_for(c.queue.get(), 20)
            assert first["type"] == "start"
            w.cancel(c)  # sent: the worker stops after the token in hand
            assert (await replies(c))[-1]["finish_reason"] == "cancelled"
            assert w.memory_bytes == 50_000_000 and w.info["device"] == "cpu"
        finally:
            w.stop("the test ended")
        assert w.proc.returncode is not None
    asyncio.run(main())


def test_stop_with_requests_in_hand(tmp_path):
    async def main():
        w = make(tmp_path)
        a = ask(w, "a", "LONG SLOW", max_tokens=1000)
        assert (await a.queue.get())["type"] == "start"
        b = ask(w, "b", "waiting")
        await asyncio.to_thread(w.stop, "job 3 needed the memory")
        for req in (a, b):
            last = (await replies(req))[-1]
            assert last["type"] == "error" and last["status"] == 503
            assert "unloaded (job 3 needed the memory)" in last["message"]
        late = ask(w, "c", "after")  # a dead worker answers at once
        assert (await replies(late))[-1]["error_type"] == "unloaded"
    asyncio.run(main())


def test_a_model_that_does_not_load(tmp_path):
    async def main():
        w = make(tmp_path, "broken-x")
        a = ask(w, "a", "hi")
        last = (await replies(a))[-1]
        assert last["type"] == "error" and "could not load" in last["message"]
        assert last["id"] == "a"
        await asyncio.to_thread(w.dead.wait, 20)
        assert not w.alive
    asyncio.run(main())


def test_a_worker_that_cannot_start_python(tmp_path):
    async def main():
        w = InferenceWorker("torch", "/m", "m", ["/bin/false"], tmp_path / "w.log",
                            dict(os.environ))
        w.start()
        last = (await replies(ask(w, "a", "hi")))[-1]
        assert last["error_type"] == "worker_exited"
        assert "exited before it loaded the model (code 1)" in last["message"]
    asyncio.run(main())


def test_request_fields():
    body = ChatRequest.model_validate({
        "model": "m", "messages": [{"role": "developer", "content": "sys"},
                                   {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]},
                                   {"role": "assistant", "content": None}],
        "max_completion_tokens": 5, "max_tokens": 9, "stop": "x", "temperature": 0})
    assert body.worker_messages() == [{"role": "system", "content": "sys"},
                                      {"role": "user", "content": "ab"},
                                      {"role": "assistant", "content": ""}]
    assert body.sampling() == {"max_tokens": 5, "temperature": 0, "top_p": 1.0, "seed": None,
                               "stop": ["x"]}
    defaults = ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "q"}]}).sampling()
    assert defaults["max_tokens"] == 256 and defaults["temperature"] == 1.0


@pytest.mark.parametrize("errors, message, param", [
    ([{"loc": ("body", "model"), "type": "missing", "msg": "Field required"}],
     "model is required", "model"),
    ([{"loc": ("body", "n"), "type": "value_error", "msg": "Value error, n must be 1"}],
     "n: n must be 1", "n"),
    ([{"loc": ("body", "messages", 0, "content", "str"), "type": "string_type",
       "msg": "Input should be a valid string"}],
     "messages.0.content: Input should be a valid string", "messages.0.content"),
    ([], "the request body is not valid", None),
])
def test_validation_errors_in_openai_shape(errors, message, param):
    err = validation_error(errors)["error"]
    assert err["message"] == message and err["param"] == param
    assert err["type"] == "invalid_request_error"
