"""The new-job form through TestClient: the knob swap, what a post means, every error at once,
demo defaults, models that are not here, and the run's length (issue 18 §1-§3, §5).
The same in real Chromium: tests/browser/test_job_form_browser.py; the app and client
fixtures: tests/api/conftest.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from app.models import Job, JobStatus
from app.web.job_form import DEMO_DEFAULTS, form_defaults
from contract.knobs import MLX_KTO, MLX_SFT, TORCH_KTO
from tests.helpers.pages import HX, add_job, controls, field_block, form_data

UNCACHED = "Qwen/Qwen2-0.5B-Instruct"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: no model of this machine's own cache counts."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def mlx_form(spec=MLX_SFT, **params) -> dict:
    data = {"name": "", "method": f"mlx/{spec.method}", "model_choice": "tiny-demo",
            "model_text": "", "dataset_choice": "demo-kto", "dataset_text": "",
            "knobs_method": f"mlx/{spec.method}", "knobs_model": "tiny-demo"}
    for name, value in params.items():
        data[f"params.{name}"] = value
    return data


def jobs(app) -> list[Job]:
    with Session(app.state.engine) as s:
        return list(s.exec(select(Job)))


def knob_swap(client, data: dict):
    r = client.post("/fragments/job-form/knobs", data=data, headers=HX)
    assert r.status_code == 200 and r.headers["HX-Trigger-After-Swap"] == "knobs-changed"
    return r.text, controls(r.text)


def test_choosing_mlx_sft_swaps_the_knobs_and_carries_what_the_person_set(client):
    data = form_data(max_steps=30, learning_rate=2e-4, per_device_train_batch_size=2)
    data.update(method="mlx/sft", knobs_method="torch/kto", knobs_model="tiny-demo")
    html, c = knob_swap(client, data)
    assert 'data-method="mlx/sft"' in html and c["knobs_method"]["value"] == "mlx/sft"
    assert not any(k in c for k in ("params.max_steps", "params.per_device_train_batch_size"))
    assert c["params.iters"]["value"] == "30"  # steps ↔ iters, changed by the person
    assert c["params.learning_rate"]["value"] == "0.0002"
    assert c["params.batch_size"]["value"] == "4"  # untouched: mlx's own default
    assert "checked" in c["params.compile"]  # mlx's default: on
    assert c["params.steps_per_report"]["value"] == "1"  # the demo's: a point every step
    assert 'id="method-help" hx-swap-oob="true">mlx-lm' in html  # the help follows
    assert "TRL's KTOTrainer" not in html


def test_untouched_values_take_the_new_defaults(client):
    data = form_data(**DEMO_DEFAULTS[("torch", "kto")])
    data.update(method="mlx/kto", knobs_method="torch/kto", knobs_model="tiny-demo")
    _, c = knob_swap(client, data)
    want = form_defaults(MLX_KTO, "tiny-demo")
    assert c["params.iters"]["value"] == str(want["iters"])
    assert c["params.max_seq_length"]["value"] == str(want["max_seq_length"])
    assert float(c["params.learning_rate"]["value"]) == want["learning_rate"]


def test_another_model_swaps_demo_defaults_for_the_seed_guides(client):
    data = form_data(**DEMO_DEFAULTS[("torch", "kto")])
    data.update(model_text=UNCACHED, knobs_method="torch/kto", knobs_model="tiny-demo")
    html, c = knob_swap(client, data)
    assert float(c["params.learning_rate"]["value"]) == TORCH_KTO.knob("learning_rate").default
    assert c["params.max_steps"]["value"] == "-1" and "demo-defaults" not in html
    assert f"hf download {UNCACHED}" in html  # out of band: this model is not here


def test_a_post_with_another_methods_knobs_is_refused_beside_the_method(app, client):
    """The issue's run: mlx · SFT chosen while torch KTO's knobs were on screen."""
    data = form_data(max_steps=30)
    data.update(method="mlx/sft", knobs_method="torch/kto", knobs_model="tiny-demo")
    r = client.post("/jobs/new", data=data, headers=HX)
    assert r.status_code == 200 and "HX-Redirect" not in r.headers
    block = field_block(r.text, "f-method")
    assert "has-error" in block and "max_steps" in block and "nothing was started" in block
    assert controls(r.text)["params.iters"]["value"] == "30"  # carried over for the retry
    r = client.post("/jobs/new", data=data)  # without htmx: the page, 422
    assert r.status_code == 422 and "nothing was started" in r.text
    assert jobs(app) == []


def test_a_box_that_was_not_on_the_form_keeps_its_default(app, client):
    """compile was never on the form (torch knobs were): it must not become False."""
    r = client.post("/jobs/new", data=mlx_form(iters="3"), headers=HX)
    assert r.headers.get("HX-Redirect"), r.text
    r = client.post("/jobs/new", data=mlx_form(iters="3", compile="false"), headers=HX)
    assert r.headers.get("HX-Redirect"), r.text
    r = client.post("/jobs/new", data=mlx_form(iters="3", compile=["false", "true"]), headers=HX)
    assert r.headers.get("HX-Redirect"), r.text
    absent, unchecked, checked = sorted(jobs(app), key=lambda j: j.id)
    assert absent.params["compile"] is True and absent.params["iters"] == 3
    assert unchecked.params["compile"] is False and checked.params["compile"] is True


def test_every_field_error_is_shown_at_once(client):
    data = form_data(per_device_train_batch_size=0, beta="x")
    data.update(model_choice="", model_text="nobody/not-here", dataset_choice="",
                dataset_text="/nope/data.jsonl")
    r = client.post("/jobs/new", data=data, headers=HX)
    for fid, text in (("f-per_device_train_batch_size", "at least 1"), ("f-beta", "number"),
                      ("f-model", "hf download nobody/not-here"), ("f-dataset", "")):
        assert "has-error" in field_block(r.text, fid), fid
        assert text in field_block(r.text, fid), fid
    assert r.text.count('class="field-error"') == 4


def test_demo_defaults_on_the_form_only(app, client):
    c = controls(client.get("/jobs/new").text)
    assert float(c["params.learning_rate"]["value"]) == DEMO_DEFAULTS[("torch", "kto")][
        "learning_rate"]
    assert c["params.logging_steps"]["value"] == "1"
    # a real model (the models page's "Train"): the seed guide's values
    c = controls(client.get(f"/jobs/new?model={UNCACHED}").text)
    assert float(c["params.learning_rate"]["value"]) == 5e-7
    # the API keeps the knobs' own defaults (scripts rely on them)
    r = client.post("/api/jobs", json={"model": "tiny-demo", "dataset": "demo-kto"})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["learning_rate"] == 5e-7


@pytest.mark.parametrize("model", [UNCACHED, "mlx-community/Qwen3-14B-4bit"])
def test_submit_refuses_a_hub_model_that_is_not_here(client, model):
    r = client.post("/api/jobs", json={"model": model, "dataset": "demo-kto"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == "model" and f"hf download {model}" in detail["msg"]


def test_a_hub_model_may_be_queued_where_workers_download(app, client, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    app.state.settings.allow_downloads = True
    r = client.post("/api/jobs", json={"model": UNCACHED, "dataset": "demo-kto"})
    assert r.status_code == 201, r.text
    data = form_data()
    data.update(model_choice="", model_text=UNCACHED)
    html = client.post("/fragments/plan", data=data, headers=HX).text
    assert "the worker downloads it when the job starts" in html


@pytest.mark.parametrize("model", ["tests/..", "tests/.", "a/..b", "org/name."])
def test_dot_segments_are_not_hub_ids(client, model):
    r = client.post("/api/jobs", json={"model": model, "dataset": "demo-kto"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "model", r.text


def test_plan_says_when_the_model_is_not_here(client):
    r = client.post("/api/plan", json={"model": UNCACHED, "params": {}})
    body = r.json()
    assert r.status_code == 200 and body["verdict"] in ("fits", "tight", "won't fit")
    assert body["model_missing"]["command"] == f"hf download {UNCACHED}"
    assert "not on this machine" in body["message"]
    data = form_data()
    data.update(model_choice="", model_text=UNCACHED)
    html = client.post("/fragments/plan", data=data, headers=HX).text
    assert 'data-missing="true"' in html and f"hf download {UNCACHED}" in html
    page = client.get("/jobs/new").text  # every preset's model is missing here
    assert page.count("· not downloaded</option>") == len(client.get("/api/plan/presets").json())


def plan_length(client, **params) -> str:
    html = client.post("/fragments/plan", data=form_data(**params), headers=HX).text
    start = html.index('data-testid="plan-length"')
    text = re.sub(r"<[^>]+>", " ", html[html.index(">", start) + 1:html.index("</p>", start)])
    return " ".join(text.split())


def test_the_plan_shows_the_steps_the_settings_imply(client):
    assert "50 steps" in plan_length(client, max_steps=50)
    # by epochs: 8 rows, batches of 2, 2 accumulated -> 2 steps an epoch, 1.5 epochs -> 3
    text = plan_length(client, max_steps=-1, num_train_epochs=1.5,
                       per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert "3 steps" in text and "2 steps an epoch" in text and "8 rows" in text
    assert "no time estimate yet" in text


def test_the_plan_estimates_the_duration_from_past_runs(app, client):
    start = datetime.now(UTC) - timedelta(minutes=5)
    for rate in (2.0, 4.0, 3.0):  # samples a second; 10 s of loading around each
        add_job(app, status=JobStatus.succeeded, started_at=start,
                finished_at=start + timedelta(seconds=10 + 64 / rate),
                summary={"samples_per_s": rate, "train_runtime_s": 64 / rate})
    add_job(app, status=JobStatus.failed, summary={"samples_per_s": 0.01})  # not counted
    text = plan_length(client, max_steps=100, per_device_train_batch_size=2,
                       gradient_accumulation_steps=1)
    # 200 samples at the median 3 samples/s, plus the 10 s around training: 77 s
    assert "about 1m 17s" in text and "3 finished runs" in text, text
