"""The Add model form (templates/_model_download.html) and a download's job page panel
(templates/_download_progress.html), in-process against the loopback hub: Check shows the
files, size, free disk and the planner's verdict; Download starts the job and HX-Redirects to
its page; refusals come back in the form; the job page shows bytes, files, speed and ETA."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from app.models import Event, Job
from tests.helpers.fake_hub import FakeHub

CONFIG = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
          "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
          "vocab_size": 151936, "tie_word_embeddings": True}
FILES = {"config.json": json.dumps(CONFIG).encode(), "tokenizer.json": b"{}",
         "model.safetensors": b"\0" * 2_000_000, "model.gguf": b"\1" * 1000}
HTMX = {"HX-Request": "true"}


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    with FakeHub() as hub:
        hub.add("acme/tiny", FILES)
        hub.add("acme/gated", FILES, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
        yield hub


def test_check_shows_size_free_disk_and_the_planners_verdict(client, hub):
    r = client.post("/models/download/check", data={"repo_id": "acme/tiny"}, headers=HTMX)
    assert r.status_code == 200
    html = r.text
    assert 'id="model-download"' in html and 'id="check-size"' in html
    assert "1.9 MiB" in html and 'id="check-free"' in html
    assert 'id="check-plan"' in html and "Training it here (torch KTO" in html
    assert "model.gguf" in html  # listed as left out
    assert 'id="download-start"' in html and 'hx-post="/models/download"' in html


def test_download_starts_the_job_and_goes_to_its_page(client, app, hub):
    r = client.post("/models/download", data={"repo_id": "acme/tiny", "revision": ""},
                    headers=HTMX)
    assert r.status_code == 200 and r.headers["HX-Redirect"].startswith("/jobs/"), r.text
    job_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    with Session(app.state.engine) as s:
        job = s.get(Job, job_id)
        assert (job.backend, job.method, job.model) == ("hub", "download", "acme/tiny")
        s.add(Event(job_id=job_id, seq=1, t=1.8e9, type="progress", data={
            "step": 1_048_576, "total_steps": 2_000_150, "bytes_done": 1_048_576,
            "bytes_total": 2_000_150, "files_done": 2, "files_total": 3,
            "bytes_per_s": 524_288.0, "eta_s": 1.8}))
        job.status = "running"
        s.add(job)
        s.commit()
    page = client.get(f"/jobs/{job_id}").text
    assert f'hx-get="/jobs/{job_id}/download"' in page
    assert 'id="chart-loss"' not in page  # no training charts for a download
    panel = client.get(f"/jobs/{job_id}/download").text
    assert "1.0 MiB of 1.9 MiB" in panel and "2 of 3" in panel
    assert "512 KiB/s" in panel and 'aria-valuenow="52.4"' in panel


def test_refusals_come_back_in_the_form(client, hub):
    r = client.post("/models/download/check", data={"repo_id": "not an id"}, headers=HTMX)
    assert r.status_code == 200 and 'id="err-repo_id"' in r.text and "is not a hub id" in r.text
    r = client.post("/models/download/check", data={"repo_id": "acme/gated"}, headers=HTMX)
    assert 'id="download-refused"' in r.text and "acme/gated is gated" in r.text
    assert "HF_TOKEN" in r.text
    r = client.post("/models/download", data={"repo_id": "acme/nope"})  # not htmx
    assert r.status_code == 404 and "no model acme/nope" in r.text


def test_the_download_panel_is_only_for_downloads(client, app):
    assert client.get("/jobs/999/download").status_code == 404


@pytest.mark.parametrize(("method", "backend", "shown", "hidden"), [
    ("download", "hub", ["Downloaded", "1.5 MiB"], [">Step<", "Tokens/s", "Epoch"]),
    ("convert", "mlx", ["Blocks", "3 / 8"], [">Step<", "Tokens/s", "Epoch"]),
    ("kto", "torch", [">Step<", "Tokens/s", "Epoch"], ["Downloaded", "Blocks"]),
])
def test_the_status_card_counts_what_the_job_does(client, app, method, backend, shown, hidden):
    """A download counts bytes (not "Step 563320 / 1526480"), a convert its blocks; neither
    has a throughput in tokens or an epoch."""
    steps = (524288, 1572864) if method == "download" else (3, 8)
    with Session(app.state.engine) as s:
        job = Job(name="j", backend=backend, method=method, model="acme/tiny-chat",
                  dataset="", status="running", step=steps[0], total_steps=steps[1])
        s.add(job)
        s.commit()
        job_id = job.id
    html = client.get(f"/jobs/{job_id}").text
    card = html[html.index('class="stats"'):]
    card = card[:card.index("</dl>")]
    assert all(text in card for text in shown), card
    assert not any(text in card for text in hidden), card
