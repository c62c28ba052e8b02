"""Auto-tuning through the app (issue 14): the knob's 422, the plan the server writes at
launch, a `tune` event folded into params and `tuning`, the job page's card, clone and
compare, and the new-job form (tune preselected auto, the effective batch live). The app
and client fixtures: tests/api/conftest.py; the real server with a worker:
tests/integration/test_tune_server.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlmodel import Session

from app.jobs.ingest import ingest
from app.jobs.tuning import prepare_tune_plan
from app.models import Job
from contract.events import EventWriter
from contract.knobs import TORCH_KTO
from contract.tune import PLAN_FILE, RESULT_FILE, read_plan
from tests.helpers.pages import HX, add_job, controls, form_data

CHOSEN = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1,
          "gradient_checkpointing": False, "precompute_ref_log_probs": False,
          "use_liger_kernel": False}
BASE = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
        "gradient_checkpointing": True, "precompute_ref_log_probs": False,
        "use_liger_kernel": False}
GiB = 2**30


def tune_event(**more) -> dict:
    return {"chosen": dict(CHOSEN),
            "tried": [{"settings": dict(CHOSEN), "outcome": "ok", "samples_per_s": 62.1,
                       "peak_bytes": 24 * GiB, "seconds": 3.0, "note": ""},
                      {"settings": {**CHOSEN, "per_device_train_batch_size": 8,
                                    "gradient_accumulation_steps": 2}, "outcome": "oom",
                       "samples_per_s": None, "peak_bytes": None, "seconds": 1.0,
                       "note": "OutOfMemoryError: CUDA out of memory"},
                      {"settings": dict(BASE), "outcome": "ok", "samples_per_s": 4.2,
                       "peak_bytes": int(1.2 * GiB), "seconds": 5.0, "note": ""}],
            "baseline_samples_per_s": 4.2, "probe_s": 9.0,
            "message": "tried 3 settings; chose batch 16 × 1, no checkpointing: 14.8× the "
                       "seed defaults, 24 GiB of 139", **more}


def tuned_job(app, tmp_path: Path, **event) -> Job:
    """A running tune: auto job whose worker wrote a `tune` event, ingested."""
    run_dir = tmp_path / "runs" / "tuned"
    run_dir.mkdir(parents=True)
    params = TORCH_KTO.validate({"tune": "auto"})
    job = add_job(app, name="tuned", params=params, run_dir=str(run_dir))
    EventWriter(run_dir / "events.jsonl").emit("tune", **tune_event(**event))
    with Session(app.state.engine) as s:
        job = s.get(Job, job.id)
        ingest(s, job)
        s.refresh(job)
        s.expunge(job)
    return job


def test_a_tune_value_other_than_auto_or_off_is_a_422(client):
    r = client.post("/api/jobs", json={"model": "tiny-demo", "dataset": "demo-kto",
                                       "params": {"tune": "fast"}})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"][-1] == "params.tune" or "tune" in json.dumps(detail)
    assert "auto" in detail["msg"] and "off" in detail["msg"]


def test_a_request_without_tune_keeps_every_knob_as_given(client):
    r = client.post("/api/jobs", json={"model": "tiny-demo", "dataset": "demo-kto",
                                       "params": {"max_steps": 5}})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["tune"] == "off" and r.json()["tuning"] is None


def test_a_tune_event_puts_the_chosen_values_in_params_and_tuning(app, client, tmp_path):
    job = tuned_job(app, tmp_path)
    assert job.params["per_device_train_batch_size"] == 16
    assert job.params["gradient_accumulation_steps"] == 1
    assert job.params["gradient_checkpointing"] is False
    assert job.params["tune"] == "auto"  # kept: the run was tuned
    assert job.params["learning_rate"] == TORCH_KTO.defaults()["learning_rate"]
    body = client.get(f"/api/jobs/{job.id}").json()
    assert body["params"]["per_device_train_batch_size"] == 16
    t = body["tuning"]
    assert t["chosen"] == CHOSEN and len(t["tried"]) == 3
    assert t["asked"]["per_device_train_batch_size"] == 2
    assert t["asked"]["gradient_accumulation_steps"] == 8
    assert "14.8×" in t["message"] and t["baseline_samples_per_s"] == 4.2


def test_a_choice_that_changes_the_effective_batch_or_other_knobs_is_ignored(app, tmp_path):
    job = tuned_job(app, tmp_path, chosen={**CHOSEN, "gradient_accumulation_steps": 4,
                                           "learning_rate": 1.0})
    assert job.params["per_device_train_batch_size"] == 2  # as asked: nothing merged
    assert job.params["gradient_accumulation_steps"] == 8
    assert job.params["learning_rate"] == TORCH_KTO.defaults()["learning_rate"]
    assert job.tuning["chosen"] == {}


def test_the_job_page_shows_the_card_for_a_tuned_job_only(app, client, tmp_path):
    job = tuned_job(app, tmp_path)
    html = client.get(f"/jobs/{job.id}").text
    assert 'data-testid="tune-card"' in html and "Auto-tuned" in html
    assert "14.8× the seed defaults, 24 GiB of 139" in html
    card = html[html.index('data-testid="tune-card"'):]
    card = card[:card.index("</section>")]
    assert card.count("<tr") == 4  # the head and one row per setting tried
    assert "batch 16 × 1, no checkpointing" in card and "62.1" in card and "14.8×" in card
    assert "oom" in card and "24.0 GiB" in card
    assert 'data-chosen="true"' in card
    assert "the job asked for batch 2 × 8, checkpointing" in card
    # The fragment the page re-fetches on the `tune` event.
    assert 'data-testid="tune-card"' in client.get(f"/jobs/{job.id}/tuning").text
    plain = add_job(app, name="plain")
    assert 'data-testid="tune-card"' not in client.get(f"/jobs/{plain.id}").text
    assert client.get(f"/jobs/{plain.id}/tuning").text.strip() == ""
    assert client.get("/jobs/999999/tuning").status_code == 404


def test_clone_reproduces_the_tuned_run_with_tune_off(app, client, tmp_path):
    job = tuned_job(app, tmp_path)
    form = controls(client.get(f"/jobs/new?from={job.id}").text)
    assert form["params.tune"]["value"] == "off"
    assert form["params.per_device_train_batch_size"]["value"] == "16"
    assert form["params.gradient_accumulation_steps"]["value"] == "1"
    assert "checked" not in form["params.gradient_checkpointing"]
    # A tune: auto job that was never tuned stays auto in its clone.
    waiting = add_job(app, name="waiting", params=TORCH_KTO.validate({"tune": "auto"}))
    form = controls(client.get(f"/jobs/new?from={waiting.id}").text)
    assert form["params.tune"]["value"] == "auto"


def test_compare_says_which_runs_were_tuned(app, client, tmp_path):
    job = tuned_job(app, tmp_path)
    plain = add_job(app, name="plain")
    html = client.get(f"/compare?ids={job.id},{plain.id}").text
    row = html[html.index(">tuned<"):]
    row = row[:row.index("</tr>")]
    assert "auto: batch 16 × 1, no checkpointing" in row and ">no<" in row
    runs = {r["id"]: r for r in client.get(f"/api/compare?ids={job.id},{plain.id}")
            .json()["runs"]}  # the JSON a script exports: the values used and the choice
    assert runs[job.id]["params"]["per_device_train_batch_size"] == 16
    assert runs[job.id]["tuning"]["chosen"] == CHOSEN and runs[plain.id]["tuning"] is None


def test_the_form_preselects_auto_and_shows_the_effective_batch(client):
    html = client.get("/jobs/new").text
    assert controls(html)["params.tune"]["value"] == "auto"
    eff = html[html.index('id="effective-batch"'):]
    eff = eff[:eff.index("</p>")]
    # tiny-demo's form defaults: batch 2 × accumulation 1
    assert re.search(r'effective-batch-value">2</strong>', eff)
    assert "per_device_train_batch_size 2 × gradient_accumulation_steps 1" in eff
    # The plan panel re-draws it out of band for the values typed.
    r = client.post("/fragments/plan", headers=HX,
                    data=form_data(per_device_train_batch_size=4, gradient_accumulation_steps=8))
    oob = r.text[r.text.index('id="effective-batch"'):]
    assert 'hx-swap-oob="true"' in oob[:200]
    assert 'effective-batch-value">32</strong>' in oob
    # MLX: batch_size × grad_accumulation_steps.
    data = {"name": "", "method": "mlx/sft", "model_choice": "tiny-demo", "model_text": "",
            "dataset_choice": "demo-kto", "dataset_text": "", "knobs_method": "mlx/sft",
            "knobs_model": "tiny-demo", "params.batch_size": "4",
            "params.grad_accumulation_steps": "3"}
    r = client.post("/fragments/plan", headers=HX, data=data)
    assert 'effective-batch-value">12</strong>' in r.text
    assert "batch_size 4 × grad_accumulation_steps 3" in r.text


def write_model(folder: Path) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 1000, "torch_dtype": "float32"}))
    return str(folder)


def test_the_server_writes_the_plan_for_auto_only_and_never_over_a_saved_choice(app, tmp_path):
    model = write_model(tmp_path / "small-model")
    run_dir = tmp_path / "runs" / "plan"
    run_dir.mkdir(parents=True)
    params = TORCH_KTO.validate({"tune": "auto", "gradient_accumulation_steps": 4,
                                 "max_steps": 20, "device": "cpu"})
    job = add_job(app, params=params, model_path=model, run_dir=str(run_dir))
    with Session(app.state.engine) as s:
        job = s.get(Job, job.id)
        assert prepare_tune_plan(job) == run_dir / PLAN_FILE
        plan = read_plan(run_dir)
        assert plan.effective_batch == 8 and plan.candidates and plan.probe_steps == 3
        assert plan.baseline["per_device_train_batch_size"] == 2
        assert plan.baseline["gradient_accumulation_steps"] == 4
        assert 0 < plan.probe_budget_s <= 120
        assert all(c.settings["per_device_train_batch_size"] *
                   c.settings["gradient_accumulation_steps"] == 8 for c in plan.candidates)
        (run_dir / PLAN_FILE).unlink()
        (run_dir / RESULT_FILE).write_text("{}")  # a resume: the worker reuses its choice
        assert prepare_tune_plan(job) is None and not (run_dir / PLAN_FILE).exists()
        (run_dir / RESULT_FILE).unlink()
        job.params = {**params, "tune": "off"}
        assert prepare_tune_plan(job) is None and not (run_dir / PLAN_FILE).exists()
        job.params = params
        job.model_path = str(tmp_path / "no-such-model")  # unreadable: no plan, no error
        assert prepare_tune_plan(job) is None


def test_auto_on_a_model_that_fits_at_no_batch_is_refused_with_the_plan(client, tmp_path):
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "vocab_size": 128256, "tie_word_embeddings": False}))
    r = client.post("/api/jobs", json={"model": str(huge), "dataset": "demo-kto",
                                       "params": {"tune": "auto"}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert "won't fit" in detail["msg"] and detail["plan"]["verdict"] == "won't fit"


def test_auto_accepts_a_job_whose_own_batch_only_a_tuned_split_fits(client, tmp_path):
    """Per-device batch 64 without checkpointing needs far more than this machine has; the
    same effective batch as 2 × 32 with checkpointing fits: auto may start, off may not."""
    mid = tmp_path / "mid"
    mid.mkdir()
    (mid / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "vocab_size": 151936, "tie_word_embeddings": True}))
    knobs = {"per_device_train_batch_size": 64, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False, "max_length": 1024, "device": "cpu"}
    r = client.post("/api/jobs", json={"model": str(mid), "dataset": "demo-kto",
                                       "params": {**knobs, "tune": "off"}})
    assert r.status_code == 422 and "won't fit" in r.text, r.text
    r = client.post("/api/jobs", json={"model": str(mid), "dataset": "demo-kto",
                                       "params": {**knobs, "tune": "auto"}})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["per_device_train_batch_size"] == 64  # chosen at launch
