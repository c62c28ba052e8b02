"""The inference server end to end: a real `prospect serve`, the real torch inference worker
(workers/torch/serve.py) on the demo model, the official `openai` client, a real training
job's adapter. Memory: the budget is capped (PROSPECT_MEMORY_BUDGET_GB) so the tiny model and
a tiny job cannot both fit, which is what the refusal and the unload for training need."""

from __future__ import annotations

import shutil
import time

import openai
import psutil
import pytest

from tests.helpers.server import kill_workers, make_server, submit

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something about preferences."}]
# The demo model's worker alone (~0.47 GiB planned) fits in 0.6 GiB, and so does a tiny job;
# the two together do not.
BUDGET_GB = "0.6"


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=120)


def wait_for(check, timeout: float = 120, what: str = "a condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def tight_server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("inference-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    server = make_server(home, PROSPECT_MEMORY_BUDGET_GB=BUDGET_GB,
                         PROSPECT_INFERENCE_IDLE_S="600")
    server.start()
    yield server
    kill_workers(server)
    server.stop()


def test_openai_client_base_and_adapter(live_server, finished_job):
    c = client(live_server)
    adapter = f"tiny-demo@job-{finished_job['id']}"
    ids = [m.id for m in c.models.list().data]
    assert "tiny-demo" in ids and adapter in ids
    t0 = time.monotonic()
    base = c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=24,
                                     temperature=0)
    first_s = time.monotonic() - t0
    assert base.object == "chat.completion" and base.model == "tiny-demo"
    assert base.choices[0].finish_reason in ("stop", "length")
    assert base.usage.completion_tokens > 0 and base.usage.prompt_tokens > 0
    text = base.choices[0].message.content
    assert isinstance(text, str) and text
    # Streaming: the same greedy text, chunk by chunk, and the usage when asked.
    chunks = list(c.chat.completions.create(model="tiny-demo", messages=MESSAGES,
                                            max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == base.usage.completion_tokens
    # The adapter is served by the same worker (one copy of the weights).
    tuned = c.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=24,
                                      temperature=0)
    assert tuned.model == adapter and tuned.usage.completion_tokens > 0
    again = c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=24,
                                      temperature=0)
    assert again.choices[0].message.content == text  # the base side is the base model
    state = live_server.get("/api/inference")
    assert len(state["workers"]) == 1, state
    worker = state["workers"][0]
    assert worker["backend"] == "torch" and worker["adapters"] == [adapter]
    assert worker["memory_bytes"] > 0 and worker["device"]
    rss = psutil.Process(live_server.proc.pid).memory_info().rss
    print(f"\nfirst answer (load included) {first_s:.1f} s; worker load "
          f"{worker['load_s']:.1f} s, memory {worker['memory_bytes'] / 2**20:.0f} MiB; "
          f"server RSS with a model loaded: {rss / 2**20:.1f} MiB")
    assert rss < 150 * 2**20
    with pytest.raises(openai.NotFoundError) as caught:
        c.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "tiny-demo" in caught.value.body["message"]  # it lists what exists
    with pytest.raises(openai.UnprocessableEntityError):
        c.chat.completions.create(model=f"other@job-{finished_job['id']}", messages=MESSAGES)
    with pytest.raises(openai.UnprocessableEntityError):
        c.chat.completions.create(model="tiny-demo", messages=MESSAGES, n=2)
    status, body = live_server.post("/api/inference/unload", {"model": None})
    assert status == 200 and body["unloaded"] == [{"model": "tiny-demo", "backend": "torch"}]


def test_a_model_is_refused_beside_a_running_job_then_unloaded_for_one(tight_server):
    c = client(tight_server)
    job = submit(tight_server, "tight run", max_steps=2000, save_steps=1000)
    tight_server.wait_step(job["id"], 1)
    with pytest.raises(openai.ConflictError) as caught:
        c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=4)
    err = caught.value.body
    assert err["code"] == "memory" and f"beside job {job['id']}" in err["message"]
    print(f"\n409: {err['message']}")
    assert tight_server.post(f"/api/jobs/{job['id']}/cancel")[0] == 200
    tight_server.wait_job(job["id"])
    # Nothing runs now: it loads. Then a job that would not fit beside it unloads it.
    answer = c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=4,
                                       temperature=0)
    assert answer.usage.completion_tokens > 0
    loaded = tight_server.get("/api/inference")["workers"][0]
    job = submit(tight_server, "needs the room", max_steps=2000, save_steps=1000)
    last = wait_for(lambda: tight_server.get("/api/inference")["last_unload"],
                    what="the unload for the job")
    assert last == {**last, "model": "tiny-demo", "backend": "torch",
                    "reason": f"job {job['id']} needed the memory"}
    assert tight_server.get("/api/inference")["workers"] == []
    assert not psutil.pid_exists(loaded["pid"]) or \
        psutil.Process(loaded["pid"]).status() == psutil.STATUS_ZOMBIE
    tight_server.wait_step(job["id"], 1)
    tight_server.post(f"/api/jobs/{job['id']}/cancel")
    tight_server.wait_job(job["id"])


def test_idle_unload(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("idle-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    server = make_server(home, PROSPECT_INFERENCE_IDLE_S="1")
    server.start()
    try:
        c = client(server)
        c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=2)
        pid = server.get("/api/inference")["workers"][0]["pid"]
        last = wait_for(lambda: server.get("/api/inference")["last_unload"],
                        what="the idle unload")
        assert last["reason"] == "idle for 1 s" and last["model"] == "tiny-demo"
        assert server.get("/api/inference")["workers"] == []
        wait_for(lambda: not psutil.pid_exists(pid), what="the worker to exit")
        # The next prompt loads it again.
        again = c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=2)
        assert again.usage.completion_tokens > 0
        pid = server.get("/api/inference")["workers"][0]["pid"]
    finally:
        server.stop()
    # The server's shutdown stops its workers: none outlives it.
    assert wait_for(lambda: not psutil.pid_exists(pid), timeout=30,
                    what="no worker after the server")


def test_mlx_adapter_and_base_through_one_mlx_worker(live_server):
    pytest.importorskip("mlx_lm")
    status, job = live_server.post("/api/jobs", {
        "name": "mlx run", "backend": "mlx", "method": "sft", "model": "tiny-demo",
        "dataset": "demo-kto", "params": {"iters": 8, "batch_size": 4, "learning_rate": 1e-3,
                                          "steps_per_report": 4, "steps_per_eval": 8,
                                          "steps_per_save": 8, "val_batches": 1}})
    assert status == 201, job
    job = live_server.wait_job(job["id"])
    assert job["status"] == "succeeded", job
    c = client(live_server)
    adapter = f"tiny-demo@job-{job['id']}"
    tuned = c.chat.completions.create(model=adapter, messages=MESSAGES, max_tokens=16,
                                      temperature=0)
    assert tuned.model_extra["prospect"]["backend"] == "mlx"
    assert tuned.usage.completion_tokens > 0
    base = c.chat.completions.create(model="tiny-demo", messages=MESSAGES, max_tokens=16,
                                     temperature=0, extra_body={"backend": "mlx"})
    assert base.model_extra["prospect"]["backend"] == "mlx"
    workers = [w for w in live_server.get("/api/inference")["workers"] if w["backend"] == "mlx"]
    assert len(workers) == 1 and workers[0]["adapters"] == [adapter]
    # An adapter is served by its job's backend only.
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        c.chat.completions.create(model=adapter, messages=MESSAGES,
                                  extra_body={"backend": "torch"})
    assert "trained with the mlx backend" in caught.value.body["message"]
    live_server.post("/api/inference/unload", {"model": None})
