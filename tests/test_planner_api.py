"""The planner through the real server: /api/plan, presets, the 422 at submit, the form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import kill_workers, make_server

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def server(demo_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("plan-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    # A model folder with only its config: 70 B parameters, which no test machine holds.
    huge = home / "models" / "huge"
    huge.mkdir(parents=True)
    (huge / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "vocab_size": 128256, "tie_word_embeddings": False}))
    s = make_server(home)
    s.start()
    s.huge = str(huge)
    yield s
    kill_workers(s)
    s.stop()


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


def test_the_form_shows_the_verdict(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        page.goto(server.url + "/jobs/new")
        result = page.locator("#plan-result [data-verdict]")
        result.wait_for(timeout=15000)
        assert result.get_attribute("data-verdict") == "fits"
        # Changing a field re-plans: a model that cannot fit.
        page.fill("#f-model-text", server.huge)
        page.locator("#f-model-text").dispatch_event("change")
        page.wait_for_selector("#plan-result [data-verdict=\"won't fit\"]", timeout=15000)
        # the verdict also sits beside the page's Start button, where no scrolling is needed
        page.wait_for_selector("#plan-chip.plan-wont-fit", timeout=15000)
        assert "won't fit" in page.inner_text("#plan-chip").lower()
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#plan-result").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "plan-form-wont-fit.png"), full_page=True)
        # Submitting shows the refusal beside a "start anyway" box.
        page.click("button[type=submit] >> nth=-1")
        page.wait_for_selector("#plan-refused", timeout=15000)
        assert page.locator("#f-force").count() == 1
        page.screenshot(path=str(ARTIFACTS / "plan-form-refused.png"), full_page=True)
        # A preset fills the form with its backend, model and knobs.
        page.select_option("#f-preset", "mlx-qwen2.5-3b")
        page.wait_for_selector('#f-model-text[value="Qwen/Qwen2.5-3B-Instruct"]',
                               timeout=15000)
        assert page.locator("#f-method").input_value() == "mlx/sft"
        assert page.locator("#f-batch_size").input_value() == "8"
        page.locator("#plan-result [data-verdict]").wait_for(timeout=15000)
        page.screenshot(path=str(ARTIFACTS / "plan-form-preset.png"), full_page=True)
        browser.close()
