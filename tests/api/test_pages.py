"""The HTML pages and htmx fragments, through TestClient (no lifespan: no supervisor runs, so
no worker ever starts; the database is migrated by hand)."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from app.db import ROOT
from app.models import Job, JobStatus
from app.web.job_form import form_defaults
from contract.knobs import TORCH_KTO
from tests.helpers.pages import HX, add_job, controls, field_block, form_data


# --- jobs list ---------------------------------------------------------------------------------
def test_jobs_page_empty_links_to_the_form(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'href="/jobs/new"' in r.text and "No jobs yet" in r.text
    assert 'hx-get="/fragments/jobs"' in r.text and 'hx-trigger="every 3s"' in r.text


def test_jobs_fragment_lists_newest_first_with_badges(app, client):
    start = datetime.now(UTC) - timedelta(minutes=3)
    add_job(app, name="older", status=JobStatus.succeeded, step=12, total_steps=12,
            started_at=start, finished_at=start + timedelta(seconds=75))
    add_job(app, name="newer", status=JobStatus.failed)
    r = client.get("/fragments/jobs")
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<tbody id="jobs-body"') and "<html" not in r.text
    assert 'hx-trigger="every 3s"' in r.text  # the fragment keeps refreshing itself
    assert r.text.index("newer") < r.text.index("older")
    assert 'class="badge badge-succeeded"' in r.text and 'class="badge badge-failed"' in r.text
    assert "12 / 12" in r.text and "1m 15s" in r.text


# --- the new-job form --------------------------------------------------------------------------
def test_form_renders_every_knob_with_its_default(client):
    """With the demo model chosen, the demo's defaults; every other knob its own."""
    defaults = form_defaults(TORCH_KTO, "tiny-demo")
    r = client.get("/jobs/new")
    assert r.status_code == 200
    c = controls(r.text)
    assert c["model_choice"]["value"] == "tiny-demo" and c["dataset_choice"]["value"] == "demo-kto"
    assert c["method"]["value"] == "torch/kto"
    assert "model_text" in c and "dataset_text" in c
    for knob in TORCH_KTO.knobs:
        if knob.group == "scale":  # offered with 2+ GPUs only: tests/api/test_scale_form.py
            assert f"params.{knob.name}" not in c
            continue
        ctl = c[f"params.{knob.name}"]
        assert knob.help in html.unescape(r.text), knob.name
        if knob.type is bool:
            assert ctl["type"] == "checkbox" and ("checked" in ctl) == defaults[knob.name]
        elif knob.choices:
            assert ctl["tag"] == "select" and ctl["value"] == defaults[knob.name]
        elif knob.type is list:
            assert ctl["type"] == "text" and ctl["value"] == ", ".join(defaults[knob.name])
        elif knob.type is str:
            assert ctl["type"] == "text" and ctl.get("value", "") == defaults[knob.name]
        else:
            assert ctl["type"] == "number", knob.name
            assert knob.type(ctl["value"]) == defaults[knob.name], knob.name
            assert float(ctl["min"]) == knob.min and float(ctl["max"]) == knob.max
    for legend in ("Training", "KTO loss", "Memory", "LoRA adapter", "Logging", "Hardware",
                   "Start from", "Held-out evaluation"):
        assert f"<legend>{legend}" in r.text
    assert 'hx-post="/jobs/new"' in r.text and 'method="post"' in r.text


def test_bad_batch_size_is_shown_beside_the_field_with_values_kept(client):
    data = form_data(per_device_train_batch_size=1, learning_rate=1e-4, max_steps=12)
    data["name"] = "my run"
    r = client.post("/jobs/new", data=data, headers=HX)
    assert r.status_code == 200 and "HX-Redirect" not in r.headers
    assert r.text.lstrip().startswith('<form id="job-form"')  # only the fragment
    block = field_block(r.text, "f-per_device_train_batch_size")
    assert "has-error" in block and "KTO needs a batch of at least 2" in block
    assert 'aria-describedby="err-params-per_device_train_batch_size"' in block
    c = controls(r.text)
    assert c["params.per_device_train_batch_size"]["value"] == "1"
    assert c["params.learning_rate"]["value"] == "0.0001"
    assert c["params.max_steps"]["value"] == "12" and c["name"]["value"] == "my run"
    assert r.text.count('class="field-error"') == 1


def test_missing_dataset_file_is_shown_beside_the_dataset(client, tmp_path):
    data = form_data()
    data["dataset_text"] = str(tmp_path / "nope.jsonl")
    r = client.post("/jobs/new", data=data, headers=HX)
    assert r.status_code == 200
    block = field_block(r.text, "f-dataset")
    assert "has-error" in block and "does not exist" in block and "nope.jsonl" in block
    assert controls(r.text)["dataset_text"]["value"] == str(tmp_path / "nope.jsonl")


def test_empty_and_non_numeric_knobs_name_the_field(client):
    data = form_data()
    data["params.beta"] = ""
    r = client.post("/jobs/new", data=data, headers=HX)
    assert "must not be empty" in field_block(r.text, "f-beta")
    data["params.beta"] = "0.1"
    data["params.r"] = "2.5"
    r = client.post("/jobs/new", data=data, headers=HX)
    assert "whole number" in field_block(r.text, "f-r")


def test_good_submit_redirects_to_the_job_and_sends_every_knob(app, client):
    data = form_data(max_steps=12, logging_steps=1, save_steps=6, learning_rate=1e-4,
                     gradient_checkpointing=False, target_modules=["q_proj", "v_proj"])
    r = client.post("/jobs/new", data=data, headers=HX)
    assert r.status_code == 200, r.text
    m = re.fullmatch(r"/jobs/(\d+)", r.headers["HX-Redirect"])
    assert m
    with Session(app.state.engine) as s:
        job = s.get(Job, int(m.group(1)))
        assert job.status == JobStatus.queued and job.name == "kto-tiny-demo"
        assert job.model == "tiny-demo" and job.dataset == "demo-kto"
        p = job.params
    assert set(p) == {k.name for k in TORCH_KTO.knobs}
    assert p["max_steps"] == 12 and p["learning_rate"] == pytest.approx(1e-4)
    assert p["gradient_checkpointing"] is False and p["precompute_ref_log_probs"] is False
    assert p["target_modules"] == ["q_proj", "v_proj"] and p["device"] == "auto"


def test_typed_model_and_dataset_win_over_the_selects(app, client, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    data = form_data()
    data["model_text"] = str(folder)
    data["dataset_text"] = str(tmp_path / "datasets" / "demo-kto.jsonl")
    r = client.post("/jobs/new", data=data, headers=HX)
    job_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    with Session(app.state.engine) as s:
        job = s.get(Job, job_id)
        assert job.model == str(folder) and job.dataset.endswith("demo-kto.jsonl")


def test_without_javascript_post_redirects_or_shows_the_page(app, client):
    r = client.post("/jobs/new", data=form_data(), follow_redirects=False)
    assert r.status_code == 303 and re.fullmatch(r"/jobs/\d+", r.headers["location"])
    bad = form_data()
    bad["model_choice"] = ""
    r = client.post("/jobs/new", data=bad, follow_redirects=False)
    assert r.status_code == 422 and "<html" in r.text
    assert "choose a model" in field_block(r.text, "f-model")


def test_unknown_method_is_reported_on_the_method_field(client):
    data = form_data()
    data["method"] = "mlx/dpo"
    r = client.post("/jobs/new", data=data, headers=HX)
    assert "is not available" in field_block(r.text, "f-method")


# --- the job page ------------------------------------------------------------------------------
def test_live_job_page_wires_sse_to_card_chart_and_log(app, client):
    job = add_job(app, status=JobStatus.running, pid=999_999, last_seq=41, step=3,
                  total_steps=12, phase="training", started_at=datetime.now(UTC))
    r = client.get(f"/jobs/{job.id}")
    assert r.status_code == 200
    html = r.text
    assert f'sse-connect="/api/jobs/{job.id}/events?after=41"' in html
    assert 'hx-ext="sse"' in html and 'sse-close="done"' in html
    assert 'hx-trigger="sse:status, sse:done, sse:error, sse:checkpoint, sse:artifact, ' \
           'refresh"' in html
    assert 'hx-trigger="sse:progress throttle:1s"' in html
    assert 'hx-trigger="sse:metric, sse:memory, sse:log"' in html
    assert 'id="chart-loss"' in html and 'id="log-tail"' in html and "/static/js/job.js" in html
    cancel = re.search(r'<button[^>]*data-action="cancel"[^>]*>', html).group(0)
    assert f'hx-post="/jobs/{job.id}/cancel"' in cancel and "hx-confirm=" in cancel
    assert "25%" in html
    assert "learning_rate" in html and "per_device_train_batch_size" in html


def test_finished_job_reads_from_the_database_only(app, client):
    job = add_job(app, status=JobStatus.succeeded, step=12, total_steps=12, last_seq=80,
                  adapter_path="/x/adapter", started_at=datetime.now(UTC),
                  finished_at=datetime.now(UTC))
    html = client.get(f"/jobs/{job.id}").text
    assert "sse-connect" not in html and 'data-live="false"' in html
    assert "/x/adapter" in html
    assert 'data-action="cancel"' not in html  # nothing to cancel: the bar leaves it out


def test_card_fragment_shows_error_hint_and_log_tail(app, client):
    job = add_job(app, status=JobStatus.failed, error_type="OutOfMemory", error="boom",
                  hint="lower the batch size", log_tail="Traceback: last line")
    r = client.get(f"/jobs/{job.id}/card")
    assert r.status_code == 200 and "<html" not in r.text
    assert 'data-final="true"' in r.text and "badge-failed" in r.text
    for text in ("OutOfMemory", "boom", "lower the batch size", "Traceback: last line"):
        assert text in r.text


def test_unknown_job_is_a_404_page(client):
    r = client.get("/jobs/4242")
    assert r.status_code == 404 and "Job 4242 does not exist" in r.text


# --- assets ------------------------------------------------------------------------------------
LINK = r'(?<![\w-])(?:src|href|action|sse-connect|hx-get|hx-post)="([^"]+)"'


def test_pages_load_nothing_from_another_host(app, client):
    job = add_job(app)
    for path in ("/", "/jobs/new", f"/jobs/{job.id}", "/fragments/jobs", "/compare",
                 "/datasets", "/adapters", "/models"):
        html = client.get(path).text
        for url in re.findall(LINK, html):
            assert url.startswith(("/", "#")), (path, url)
    for asset in ("/static/vendor/htmx/htmx.min.js", "/static/vendor/htmx-ext-sse/sse.min.js",
                  "/static/vendor/uplot/uPlot.iife.min.js", "/static/vendor/uplot/uPlot.min.css",
                  "/static/css/app.css", "/static/js/app.js", "/static/js/job.js"):
        assert client.get(asset).status_code == 200, asset


def test_vendored_libraries_are_pinned_with_licences():
    vendor = ROOT / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    for name, version in (("htmx.org", "2.0.11"), ("htmx-ext-sse", "2.2.4"),
                          ("uplot", "1.6.32")):
        assert name in readme and version in readme
    for folder in ("htmx", "htmx-ext-sse", "uplot"):
        assert (vendor / folder / "LICENSE").is_file()
    assert 'version:"2.0.11"' in (vendor / "htmx" / "htmx.min.js").read_text()

