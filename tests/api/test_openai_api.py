"""The OpenAI-compatible API over the fake inference worker (tests/fake_inference_worker.py),
served by uvicorn in this process: real HTTP, so a stream can be read chunk by chunk and a
client can hang up. Shapes, streaming, errors, the token rules, queueing, a crash mid-answer
and a client that goes away."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.helpers.inference import Served, serve, wait_for


@pytest.fixture()
def served(tmp_path):
    app, server, thread, url = serve(tmp_path)
    s = Served(app, url)
    yield s
    s.close(server, thread)


# --- models -------------------------------------------------------------------------------
def test_models_lists_bases_and_adapters(served):
    body = served.http.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[0] == "tiny-demo@job-1"  # adapters first
    assert "tiny-demo" in ids and "broken-model" in ids
    adapter = body["data"][0]
    assert adapter["object"] == "model" and adapter["owned_by"] == "prospect"
    assert isinstance(adapter["created"], int)
    assert adapter["prospect"] == {"kind": "adapter", "base": "tiny-demo", "backend": "torch",
                                   "job_id": 1, "name": "run one", "loaded": False}
    assert served.http.get("/v1/models/tiny-demo@job-1").json()["id"] == "tiny-demo@job-1"


# --- answers ------------------------------------------------------------------------------
def test_answer_shape_and_usage(served):
    resp = served.chat("hello there")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-demo"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "base: hello there"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    p = body["prospect"]
    assert p["backend"] == "torch" and p["device"] == "cpu" and p["finish_reason"] == "stop"
    assert p["seconds"] >= 0 and p["ttft_s"] >= 0 and p["tokens_per_s"] >= 0
    # The adapter id reaches the same worker, with the adapter folder.
    body = served.chat("hello", model="tiny-demo@job-1").json()
    assert body["choices"][0]["message"]["content"] == "000001: hello"
    workers = served.http.get("/api/inference").json()["workers"]
    assert len(workers) == 1 and workers[0]["adapters"] == ["tiny-demo@job-1"]


def test_sampling_fields_reach_the_worker(served):
    body = served.chat("one two three four", max_tokens=2).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "base: one"
    body = served.chat("one two three four", max_completion_tokens=3, stop="thr").json()
    assert body["choices"][0]["message"]["content"] == "base: one two"
    body = served.chat("one two three", stop=["two", "xx"], seed=3, top_p=0.5).json()
    assert body["choices"][0]["message"]["content"] == "base: one "
    parts = [{"type": "text", "text": "from "}, {"type": "text", "text": "parts"}]
    resp = served.http.post("/v1/chat/completions", json={
        "model": "tiny-demo", "user": "ignored", "presence_penalty": 0,
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": parts}]})
    assert resp.json()["choices"][0]["message"]["content"] == "base: from parts"


def test_stream_chunks_and_done(served):
    status, events = served.stream("a b c", stream_options={"include_usage": True})
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "base: a b c"
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["prospect"]["finish_reason"] == "stop"
    assert finish["usage"]["completion_tokens"] == 4
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    # Without include_usage: no usage-only chunk.
    _, events = served.stream("a")
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


# --- errors -------------------------------------------------------------------------------
def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return err


def test_unknown_models_are_404_listing_what_exists(served):
    err = error_of(served.chat(model="no-such-model"), 404)
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    assert "tiny-demo@job-1" in err["message"] and "no-such-model" in err["message"]
    err = error_of(served.chat(model="tiny-demo@job-99"), 404)
    assert "no job 99" in err["message"]
    err = error_of(served.chat(model="other@job-1"), 422)
    assert err["message"] == ("job 1's adapter was trained on tiny-demo, not other; use "
                              "tiny-demo@job-1")
    err = error_of(served.http.get("/v1/models/nothing"), 404)
    err = error_of(served.http.get("/v1/nothing"), 404)


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "tiny-demo", "messages": []}, "messages"),
    ({"model": "tiny-demo", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"model": "tiny-demo", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "tiny-demo", "messages": [{"role": "user", "content": "x"}],
      "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "tiny-demo", "messages": [{"role": "user", "content": "x"}],
      "temperature": 3}, "temperature"),
    ({"model": "tiny-demo", "messages": [{"role": "user", "content": "x"}],
      "backend": "jax"}, "backend"),
    ({"model": "tiny-demo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages.0.content"),
])
def test_bad_bodies_are_422_in_openai_shape(served, body, param):
    err = error_of(served.http.post("/v1/chat/completions", json=body), 422)
    assert err["param"].startswith(param), err
    assert err["type"] == "invalid_request_error"


def test_bad_json_is_422(served):
    resp = served.http.post("/v1/chat/completions", content=b"{nope",
                            headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(resp, 422)["message"]


def test_prompt_longer_than_the_context_is_422(served):
    err = error_of(served.chat(" ".join(["w"] * 80)), 422)
    assert err["code"] == "context_length_exceeded"
    assert "81 tokens" in err["message"] and "64" in err["message"]
    status, events = served.stream(" ".join(["w"] * 80))
    assert status == 422 and events[0]["error"]["code"] == "context_length_exceeded"


def test_model_that_fails_to_load(served):
    err = error_of(served.chat(model="broken-model"), 500)
    assert "could not load" in err["message"] and "check the folder" in err["message"]
    assert served.http.get("/api/inference").json()["workers"] == []


def test_token_rules_apply(tmp_path):
    app, server, thread, url = serve(tmp_path, token="s3cret")
    try:
        body = {"model": "tiny-demo", "messages": [{"role": "user", "content": "hi"}]}
        refused = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"  # OpenAI's shape
        assert "s3cret" not in refused.text
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/api/jobs").json()["detail"]  # the rest keeps its shape
        ok = httpx.post(f"{url}/v1/chat/completions", json=body,
                        headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 200, ok.text
        # Another site's page cannot make it generate.
        foreign = httpx.post(f"{url}/v1/chat/completions", json=body, headers={
            "Authorization": "Bearer s3cret", "Origin": "http://evil.example"})
        assert foreign.status_code == 403
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.inference.stop_all()


# --- one worker, many requests --------------------------------------------------------------
def test_concurrent_requests_are_queued_in_order(served):
    served.chat("warm")  # loaded
    results: dict[int, dict] = {}

    def ask(i: int) -> None:
        results[i] = served.chat(f"SLOW q{i}", max_tokens=3).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    snapshot = wait_for(lambda: (w := served.http.get("/api/inference").json()["workers"])
                        and w[0]["busy"] and w[0]["waiting"] >= 1 and w, what="a queue")
    assert snapshot[0]["waiting"] <= 3
    for t in threads:
        t.join(30)
    assert [results[i]["choices"][0]["message"]["content"] for i in range(4)] == \
        [f"base: SLOW q{i}" for i in range(4)]
    assert len(served.http.get("/api/inference").json()["workers"]) == 1  # one worker did all


def test_crash_mid_answer_then_a_fresh_worker(served):
    served.chat("warm")
    first_pid = served.http.get("/api/inference").json()["workers"][0]["pid"]
    status, events = served.stream("CRASH now please")
    assert status == 200
    assert events[-1] == "[DONE]"
    err = events[-2]["error"]
    assert err["code"] == "worker_exited" and "mid-answer" in err["message"]
    assert "RuntimeError: boom" in err["message"]  # the end of its log
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-2])
    assert text == "base: CRASH"
    err = error_of(served.chat("CRASH again"), 500)
    assert err["code"] == "worker_exited"
    body = served.chat("fine").json()  # a fresh worker answers
    assert body["choices"][0]["message"]["content"] == "base: fine"
    assert served.http.get("/api/inference").json()["workers"][0]["pid"] != first_pid


def test_client_disconnect_cancels(served, monkeypatch):
    monkeypatch.setenv("FAKE_INFERENCE_CONTEXT", "100000")  # uncancelled: 1000 s of tokens
    served.chat("warm")
    worker = next(iter(served.manager.workers.values()))
    body = {"model": "tiny-demo", "messages": [{"role": "user", "content": "LONG SLOW"}],
            "stream": True, "max_tokens": 10_000}
    with served.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: ") and "content" in line:
                got += 1
            if got >= 3:
                break
    # The connection is closed: the worker gets a cancel and is free for the next request.
    wait_for(lambda: not worker.busy, timeout=10, what="the cancel")
    t0 = time.monotonic()
    assert served.chat("next").json()["choices"][0]["message"]["content"] == "base: next"
    assert time.monotonic() - t0 < 10


def test_disconnect_while_queued_drops_the_request(served):
    served.chat("warm")
    worker = next(iter(served.manager.workers.values()))
    hold = threading.Thread(target=served.chat, args=("SLOW a b c d e f g h i j",))
    hold.start()
    wait_for(lambda: worker.busy, what="the first request")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", timeout=0.5, json={
            "model": "tiny-demo", "messages": [{"role": "user", "content": "queued"}]})
    wait_for(lambda: worker.waiting == 0, what="the queued request to go")
    hold.join(30)


# --- /api/inference -----------------------------------------------------------------------
def test_inference_status_and_unload(served):
    assert served.http.get("/api/inference").json() == {
        "idle_timeout_s": 600.0, "workers": [], "last_unload": None}
    served.chat("hi", model="tiny-demo@job-1")
    w = served.http.get("/api/inference").json()["workers"][0]
    assert w["backend"] == "torch" and w["model"] == "tiny-demo"
    assert w["device"] == "cpu" and w["dtype"] == "float32" and w["memory_bytes"] == 50_000_000
    assert w["busy"] is False and w["waiting"] == 0 and w["pid"] > 0
    assert w["loaded_at"] and w["last_used_at"] and w["load_s"] >= 0
    models = {m["id"]: m for m in served.http.get("/v1/models").json()["data"]}
    assert models["tiny-demo"]["prospect"]["loaded"] is True
    assert models["tiny-demo@job-1"]["prospect"]["loaded"] is True
    resp = served.http.post("/api/inference/unload", json={"model": "nothing"})
    assert resp.json() == {"unloaded": []}
    resp = served.http.post("/api/inference/unload", json={"model": "tiny-demo@job-1"})
    assert resp.json() == {"unloaded": [{"model": "tiny-demo", "backend": "torch"}]}
    body = served.http.get("/api/inference").json()
    assert body["workers"] == []
    assert body["last_unload"]["reason"] == "unloaded on request"
    served.chat("hi")
    assert served.http.post("/api/inference/unload", json={}).json()["unloaded"] == [
        {"model": "tiny-demo", "backend": "torch"}]
    assert served.http.post("/api/inference/unload", json={"backend": "cuda"}).status_code \
        == 422


def test_unload_mid_answer_ends_the_stream_with_an_error(served):
    served.chat("warm")
    body = {"model": "tiny-demo", "messages": [{"role": "user", "content": "LONG SLOW"}],
            "stream": True, "max_tokens": 10_000}
    events = []
    with served.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 3:
                served.http.post("/api/inference/unload", json={"model": None})
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "model_unloaded" and "unloaded on request" in err["message"]


def test_idle_models_are_unloaded(tmp_path):
    app, server, thread, url = serve(tmp_path, inference_idle_s=0.3)
    try:
        assert httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "tiny-demo", "messages": [{"role": "user", "content": "hi"}]}
        ).status_code == 200
        last = wait_for(lambda: httpx.get(f"{url}/api/inference").json()["last_unload"],
                        what="the idle unload")
        assert last["reason"] == "idle for 0.3 s" and last["model"] == "tiny-demo"
        assert httpx.get(f"{url}/api/inference").json()["workers"] == []
    finally:
        server.should_exit = True
        thread.join(30)
        app.state.inference.stop_all()


def test_server_shutdown_stops_the_workers(tmp_path):
    app, server, thread, url = serve(tmp_path)
    httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "tiny-demo", "messages": [{"role": "user", "content": "hi"}]})
    worker = next(iter(app.state.inference.workers.values()))
    server.should_exit = True
    thread.join(30)
    assert worker.proc.poll() is not None
    assert app.state.inference.workers == {}


def test_an_unexpected_error_is_a_500_in_openai_shape(served, monkeypatch):
    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.manager, "models", broken)
    err = error_of(served.http.get("/v1/models"), 500)
    assert err["type"] == "server_error" and "RuntimeError" in err["message"]
