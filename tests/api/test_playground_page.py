"""The playground page's HTML (app/web/pages/playground.py): which models the two columns
start with, ?model= / ?compare= / ?jobs=, an unknown id, and the *Try it* entry points."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.models import JobStatus
from tests.helpers.pages import add_job, controls


@pytest.fixture()
def pg(client):
    return client


def adapter_job(app, tmp_path: Path, name: str, model: str = "tiny-demo", **fields):
    job = add_job(app, name=name, model=model, status=JobStatus.succeeded, **fields)
    folder = tmp_path / "runs" / f"job-{job.id}" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    from sqlmodel import Session

    with Session(app.state.engine) as s:
        job = s.get(type(job), job.id)
        job.adapter_path = str(folder)
        job.model_path = str(Path(app.state.settings.home_dir) / "models" / "tiny-demo")
        s.add(job)
        s.commit()
        s.refresh(job)
    return job


def columns(html: str) -> tuple[str, str]:
    c = controls(html)
    return c["model"].get("value", ""), c["compare"].get("value", "")


def test_default_is_the_latest_adapter_against_its_base(app, pg, tmp_path):
    adapter_job(app, tmp_path, "older")
    newest = adapter_job(app, tmp_path, "newest")
    add_job(app, name="no adapter", status=JobStatus.failed)
    r = pg.get("/playground")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert columns(r.text) == (f"tiny-demo@job-{newest.id}", "tiny-demo")
    assert f"tiny-demo@job-{newest.id - 1}" in r.text  # every adapter is offered
    assert 'aria-current="page">Playground' in r.text.replace('href="/playground" ', "")
    assert 'id="pg-send"' in r.text and 'id="pg-stop"' in r.text and 'id="pg-clear"' in r.text
    assert 'role="log" aria-live="polite"' in r.text
    c = controls(r.text)
    assert c["max_tokens"]["value"] == "256" and c["temperature"]["value"] == "0"
    assert c["top_p"]["value"] == "1" and c["seed"]["value"] == ""
    assert '<option value="demo-kto">demo-kto</option>' in r.text  # a prompt from a dataset
    assert "/static/js/playground.js" in r.text and "alert-error" not in r.text


def test_model_and_compare_are_honoured(app, pg, tmp_path):
    one = adapter_job(app, tmp_path, "one")
    two = adapter_job(app, tmp_path, "two")
    r = pg.get(f"/playground?model=tiny-demo@job-{one.id}")
    assert columns(r.text) == (f"tiny-demo@job-{one.id}", "tiny-demo")  # B: its base
    r = pg.get(f"/playground?model=tiny-demo@job-{one.id}&compare=tiny-demo@job-{two.id}")
    assert columns(r.text) == (f"tiny-demo@job-{one.id}", f"tiny-demo@job-{two.id}")
    r = pg.get("/playground?model=tiny-demo")  # a base model: B its newest adapter
    assert columns(r.text) == ("tiny-demo", f"tiny-demo@job-{two.id}")
    r = pg.get("/playground?model=tiny-demo&compare=")  # B off: one column
    assert columns(r.text) == ("tiny-demo", "")
    r = pg.get(f"/playground?jobs={one.id},{two.id}")  # the jobs list's "Side by side"
    assert columns(r.text) == (f"tiny-demo@job-{one.id}", f"tiny-demo@job-{two.id}")


def test_unknown_model_is_named_and_the_default_shown(app, pg, tmp_path):
    job = adapter_job(app, tmp_path, "run")
    r = pg.get("/playground?model=no-such-model")
    assert r.status_code == 200
    assert "no-such-model" in r.text and 'role="alert"' in r.text
    assert "tiny-demo" in r.text.split('role="alert"', 1)[1].split("</p>", 1)[0]  # what exists
    assert columns(r.text) == (f"tiny-demo@job-{job.id}", "tiny-demo")
    r = pg.get(f"/playground?model=other-base@job-{job.id}")  # the adapter on another base
    assert f"use tiny-demo@job-{job.id}" in r.text
    r = pg.get("/playground?jobs=999")
    assert "job 999 has no adapter" in r.text
    assert pg.get("/playground?model=" + "x" * 1001).status_code == 422


def test_no_models_says_what_to_do(app, pg):
    from sqlmodel import Session, delete

    from app.models import ModelEntry

    with Session(app.state.engine) as s:
        s.exec(delete(ModelEntry))
        s.commit()
    r = pg.get("/playground")
    assert r.status_code == 200 and 'id="pg-empty"' in r.text and "prospect init" in r.text


def test_try_it_buttons(app, pg, tmp_path):
    job = adapter_job(app, tmp_path, "tried")
    plain = add_job(app, name="running", status=JobStatus.running)
    href = f'href="/playground?model=tiny-demo%40job-{job.id}"'
    assert href in pg.get(f"/jobs/{job.id}").text
    assert "/playground?model=" not in pg.get(f"/jobs/{plain.id}").text
    assert href in pg.get("/adapters").text
    assert 'href="/playground?picked=1"' in pg.get("/").text
