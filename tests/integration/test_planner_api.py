"""The planner through the real server: /api/plan, presets, the 422 at submit, the form."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def server(plan_server):
    return plan_server


def job(model: str, **more) -> dict:
    return {"backend": "torch", "method": "kto", "model": model, "dataset": "demo-kto",
            "params": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 64,
                       "device": "cpu"}, **more}


def test_plan_for_the_demo_model_fits(server):
    status, body = server.post("/api/plan", job("tiny-demo"))
    assert status == 200, body
    assert body["verdict"] == "fits" and body["device"] == "cpu"
    names = {r["name"] for r in body["estimate"]["breakdown"]}
    assert {"weights", "activations", "logits", "reference pass", "KL pass"} <= names
    assert body["budget"]["bytes"] > body["estimate"]["total_bytes"] > 0


def test_plan_refuses_bad_input_with_4xx(server):
    status, body = server.post("/api/plan", job("tiny-demo", params={"batch": 3}))
    assert status == 422 and body["detail"][0]["field"] == "params.batch"
    status, body = server.post("/api/plan", {**job("tiny-demo"), "method": "nope"})
    assert status == 422 and body["detail"][0]["field"] == "method"
    status, body = server.post("/api/plan", {"backend": "torch"})
    assert status == 422


def test_uninspectable_model_is_not_blocked(server):
    status, body = server.post("/api/plan", job("someorg/not-cached-model"))
    assert status == 200 and body["verdict"] == "unknown"
    assert "no memory check" in body["message"]


def test_presets(server):
    presets = server.get("/api/plan/presets")
    ids = {p["id"] for p in presets}
    assert {"torch-qwen2-0.5b", "mlx-qwen3-30b-a3b-4bit"} <= ids
    assert {p["backend"] for p in presets} == {"torch", "mlx"}
    status, body = server.post("/api/plan", {"backend": "torch", "method": "kto",
                                              "model": "Qwen/Qwen2-0.5B-Instruct",
                                              "params": presets[0]["params"]})
    assert status == 200 and body["verdict"] in ("fits", "tight")
    assert "published shape" in body["note"]


def test_submit_refuses_a_job_that_wont_fit_unless_forced(server):
    status, body = server.post("/api/jobs", job(server.huge))
    assert status == 422, body
    detail = body["detail"][0]
    assert detail["field"] == "plan" and "won't fit" in detail["msg"]
    assert detail["plan"]["verdict"] == "won't fit" and "force" in detail["msg"]
    status, forced = server.post("/api/jobs", job(server.huge, force=True))
    assert status == 201, forced
    assert "force" not in forced
    server.post(f"/api/jobs/{forced['id']}/cancel")
