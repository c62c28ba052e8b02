"""Held-out metrics on the pages, and a generate job's page (TestClient, no worker):

- a KTO run with eval_fraction logs eval_ metrics beside the training ones: the job page has
  the held-out chart (hidden until it draws), the metrics API serves its series, and
  compare (page and API) and the CSV/JSON export list the eval_ names;
- a generate job's page shows the answers written of the total, no training charts and no
  Clone/Fuse/Try it; it resumes without a checkpoint; deleting it removes its prompts file;
- a run's page asks for its arena fragment only when it has an arena (no 404 to log)."""

from __future__ import annotations

import csv
import io
import json
import re

from sqlmodel import Session

from app.jobs.generate import write_prompts
from app.models import Arena, Job, JobStatus
from tests.helpers.runs import add_run

EVAL = {"eval_loss": [0.52, 0.49], "eval_rewards/chosen": [0.1, 0.3],
        "eval_rewards/rejected": [-0.1, -0.2], "eval_rewards/margins": [0.2, 0.5],
        "eval_kl": [0.0, 0.05], "rewards/chosen": [0.2, 0.4], "kl": [0.01, 0.02]}


def action_bar(html: str) -> set[str]:
    bar = re.search(r'<div class="actions job-actions" id="job-actions".*?</div>', html, re.S)
    assert bar, html
    return set(re.findall(r'id="job-([\w-]+)"', bar.group(0))) - {"actions"}


def test_held_out_metrics_are_charted_listed_and_exported(app, client):
    engine = app.state.engine
    a = add_run(engine, "held out", losses=[0.6, 0.5], extra=EVAL)
    b = add_run(engine, "plain", losses=[0.7, 0.6])
    html = client.get(f"/jobs/{a}").text
    panel = re.search(r'<section[^>]*id="panel-eval"[^>]*>', html).group(0)
    assert "data-hide-empty" in panel and "hidden" in panel  # until the chart draws
    assert 'data-series="eval_rewards/chosen,eval_rewards/rejected,eval_rewards/margins,' \
           'eval_kl"' in html
    assert 'data-series="loss,eval_loss,val_loss"' in html
    # What job.js asks for: the names every chart draws.
    names = "loss,eval_loss,eval_rewards/chosen,eval_kl"
    cols = client.get(f"/api/jobs/{a}/metrics?names={names}").json()
    assert cols["step"] == [1, 2] and cols["eval_rewards/chosen"] == [0.1, 0.3]
    assert cols["eval_kl"] == [0.0, 0.05] and cols["loss"] == [0.6, 0.5]
    # Compare: the union of names, loss first, eval_ among them.
    got = client.get(f"/api/compare?ids={a},{b}").json()["metrics"]
    assert got[0] == "loss" and set(EVAL) <= set(got)
    page = client.get(f"/compare?ids={a},{b}&metric=eval_kl").text
    options = re.findall(r'<option value="([^"]+)"', page)
    assert set(EVAL) <= set(options)
    assert re.search(r'<option value="eval_kl" selected>', page)
    # Export: a column per name.
    rows = list(csv.reader(io.StringIO(client.get(f"/api/jobs/{a}/metrics.csv").text)))
    assert rows[0][0] == "step" and set(EVAL) <= set(rows[0])
    assert set(EVAL) <= set(client.get(f"/api/jobs/{a}/metrics.json").json())


def generate_job(app, status=JobStatus.running, step=3) -> int:
    settings = app.state.settings
    prompts = write_prompts(settings, [[{"role": "user", "content": f"q{i}"}]
                                       for i in range(4)])
    with Session(app.state.engine) as s:
        job = Job(name="arena answers", backend="torch", method="generate", model="tiny-demo",
                  dataset=str(prompts), dataset_path=str(prompts),
                  model_path=str(settings.home_dir / "models" / "tiny-demo"),
                  params={"adapter_a": "", "model_b": "", "adapter_b": "", "max_tokens": 8,
                          "temperature": 0.7, "top_p": 1.0, "seed": 0},
                  status=status, step=step, total_steps=8)
        s.add(job)
        s.flush()
        job.run_dir = str(settings.runs_dir / f"{job.id:06d}")
        s.commit()
        return job.id


def test_a_generate_job_page_shows_answers_written_and_no_training(app, client):
    job_id = generate_job(app)
    html = client.get(f"/jobs/{job_id}").text
    assert re.search(r'<dt>Answers</dt><dd class="mono" id="card-answers">3 of 8</dd>', html)
    assert 'aria-label="Answers written"' in html
    for chart in ("loss", "rewards", "eval", "lr", "tps"):
        assert f'id="chart-{chart}"' not in html, chart
    assert 'id="chart-mem"' in html  # its memory still charts
    assert "<dt>Prompts</dt>" in html and "<dt>Epoch</dt>" not in html
    assert action_bar(html) == {"cancel"}
    # The live card refresh says the same.
    card = client.get(f"/jobs/{job_id}/card").text
    assert 'id="card-answers">3 of 8<' in card and action_bar(card) == {"cancel"}


def test_a_cancelled_generate_job_resumes_without_a_checkpoint(app, client):
    job_id = generate_job(app, status=JobStatus.cancelled)
    html = client.get(f"/jobs/{job_id}").text
    assert action_bar(html) == {"resume", "delete"}
    assert "the answers already written are kept" in html
    r = client.post(f"/api/jobs/{job_id}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"


def test_deleting_a_generate_job_removes_its_prompts_file(app, client):
    job_id = generate_job(app, status=JobStatus.succeeded, step=8)
    with Session(app.state.engine) as s:
        prompts = s.get(Job, job_id).dataset_path
    html = client.get(f"/jobs/{job_id}").text
    assert action_bar(html) == {"delete"}  # no Clone, Fuse or Try it
    assert client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert not (app.state.settings.home_dir / "prompts" / prompts.rsplit("/", 1)[1]).exists()


def test_a_trained_job_keeps_its_actions_and_asks_for_its_arena_when_it_has_one(
        app, client, tmp_path):
    adapter = tmp_path / "runs" / "000001" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    job_id = add_run(app.state.engine, "trained", losses=[0.5])
    with Session(app.state.engine) as s:
        job = s.get(Job, job_id)
        job.adapter_path = str(adapter)
        s.add(job)
        s.commit()
    html = client.get(f"/jobs/{job_id}").text
    assert action_bar(html) == {"clone", "try", "fuse", "delete"}
    assert 'id="job-arena"' not in html  # no arena yet: nothing to ask for (no 404)
    gen = generate_job(app)
    with Session(app.state.engine) as s:
        s.add(Arena(job_id=gen, variant_a=f"tiny-demo@job-{job_id}", variant_b="tiny-demo",
                    n=4))
        s.commit()
    assert (f'<div id="job-arena" hx-get="/jobs/{job_id}/arena" hx-trigger="load" '
            'hx-swap="innerHTML"></div>') in client.get(f"/jobs/{job_id}").text
    assert client.get(f"/jobs/{job_id}/arena").status_code == 200
