"""The arena pages on the API tier: the list and New arena form (pickers from the catalog,
sources), creating from the form, the progress while the job runs, the blind review, a
verdict by htmx (next pair + results out of band), and the run page's fragment."""

from __future__ import annotations

import re

import pytest
from sqlmodel import Session

from app.models import Arena, ArenaPair, Job
from tests.helpers.arena import adapter_run, finish_generate

SPLIT = [{"prompt": [{"role": "user", "content": f"held {i}"}],
          "completion": [{"role": "assistant", "content": f"c{i}"}], "label": i % 2 == 0}
         for i in range(4)]
HX = {"HX-Request": "true"}


@pytest.fixture()
def run(app) -> Job:
    home = app.state.settings.home
    with Session(app.state.engine) as s:
        return adapter_run(s, home, home / "models" / "tiny-demo", split=SPLIT)


def form(run: Job, **extra) -> dict:
    return {"variant_a": f"tiny-demo@job-{run.id}", "variant_b": "tiny-demo",
            "source": "prompts", "prompts": "first\nsecond\n\nthird", "n": "20",
            "max_tokens": "16", "temperature": "0.7", "seed": "5", "force": "on", **extra}


def test_the_list_page_offers_the_catalog_and_the_sources(client, run):
    r = client.get("/arenas")
    assert r.status_code == 200
    html = r.text
    assert 'aria-current="page"' in html and ">Arena<" in html
    assert f'<option value="tiny-demo@job-{run.id}" selected' in html  # A: latest adapter
    assert re.search(r'id="arena-variant_b".*?<option value="tiny-demo" selected', html, re.S)
    assert f'<option value="{run.id}" selected>#{run.id}' in html  # its split
    assert 'value="split" checked' in html and '<option value="demo-kto"' in html
    assert "No arenas yet" in html


def test_creating_from_the_form_redirects_to_the_arena(client, app, run):
    r = client.post("/arenas", data=form(run), headers=HX)
    assert r.status_code == 200 and r.headers["HX-Redirect"].startswith("/arenas/")
    arena_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    with Session(app.state.engine) as s:
        arena = s.get(Arena, arena_id)
        assert arena.n == 3 and arena.seed == 5 and arena.source == "3 pasted prompts"
        assert s.get(Job, arena.job_id).params["max_tokens"] == 16
    page = client.get(f"/arenas/{arena_id}").text
    assert 'data-state="generating"' in page and f'hx-get="/arenas/{arena_id}/stage"' in page
    assert f'href="/jobs/{arena.job_id}"' in page
    listing = client.get("/arenas").text
    assert f'href="/arenas/{arena_id}"' in listing and "3 pasted prompts" in listing


@pytest.mark.parametrize("extra, words", [
    ({"variant_a": "nope"}, "unknown model"),
    ({"prompts": "  \n "}, "gave no prompts"),
    ({"n": "many"}, "not a whole number"),
    ({"source": "split", "split_job": "999"}, "job 999 does not exist"),
])
def test_form_errors_come_back_in_the_form(client, run, extra, words):
    r = client.post("/arenas", data=form(run, **extra), headers=HX)
    assert r.status_code == 200 and "HX-Redirect" not in r.headers
    assert 'id="arena-error"' in r.text and words in r.text
    assert r.text.lstrip().startswith("{#") is False and 'id="arena-new"' in r.text
    plain = client.post("/arenas", data=form(run, **extra))
    assert plain.status_code in (404, 422) and words in plain.text


def test_review_is_blind_and_a_verdict_brings_the_next_pair(client, app, run):
    r = client.post("/arenas", data=form(run), headers=HX)
    arena_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    with Session(app.state.engine) as s:
        finish_generate(s, s.get(Arena, arena_id).job_id)
    page = client.get(f"/arenas/{arena_id}").text
    stage = page.split('id="arena-stage"', 1)[1].split('id="arena-results"', 1)[0]
    assert 'data-state="review"' in page and "tiny-demo" not in stage  # blind
    assert "Pair 1" in stage and "first" in stage
    pair_id = int(re.search(r'data-pair="(\d+)"', page)[1])
    v = client.post(f"/arenas/{arena_id}/pairs/{pair_id}/verdict", data={"verdict": "left"},
                    headers=HX)
    assert v.status_code == 200
    assert 'hx-swap-oob="true"' in v.text and 'data-col="judged">1<' in v.text
    assert f'data-pair="{pair_id}"' not in v.text and "Pair 2" in v.text
    with Session(app.state.engine) as s:
        assert s.get(ArenaPair, pair_id).verdict in ("a", "b")
    for _ in range(2):
        pid = int(re.search(r'data-pair="(\d+)"', v.text)[1])
        v = client.post(f"/arenas/{arena_id}/pairs/{pid}/verdict",
                        data={"verdict": "both_good"}, headers=HX)
    assert 'data-state="done"' in v.text and "All 3 pairs judged" in v.text
    assert re.search(r'data-col="ties"[^>]*>2<', v.text)
    bad = client.post(f"/arenas/{arena_id}/pairs/{pid}/verdict", data={"verdict": "up"},
                      headers=HX)
    assert bad.status_code == 422


def test_the_run_page_fragment_shows_its_latest_arena(client, app, run):
    assert client.get(f"/jobs/{run.id}/arena").status_code == 404
    assert client.get("/jobs/999/arena").status_code == 404
    client.post("/arenas", data=form(run), headers=HX)
    r = client.post("/arenas", data=form(run), headers=HX)
    newest = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    frag = client.get(f"/jobs/{run.id}/arena")
    assert frag.status_code == 200 and f'href="/arenas/{newest}"' in frag.text
    assert "(this run)" in frag.text


def test_missing_arena_pages_are_404(client):
    assert client.get("/arenas/999").status_code == 404
    assert client.get("/arenas/999/stage").status_code == 404
    assert client.post("/arenas/999/pairs/1/verdict", data={"verdict": "left"},
                       headers=HX).status_code == 404


def test_a_form_post_without_the_token_is_refused(app, run):
    from fastapi.testclient import TestClient

    bare = TestClient(app, base_url="http://127.0.0.1")
    assert bare.post("/arenas", data=form(run)).status_code == 403


def test_a_failed_job_says_so_on_the_page(client, app, run):
    from app.models import JobStatus

    r = client.post("/arenas", data=form(run), headers=HX)
    arena_id = int(r.headers["HX-Redirect"].rsplit("/", 1)[1])
    with Session(app.state.engine) as s:
        job = s.get(Job, s.get(Arena, arena_id).job_id)
        job.status, job.error = JobStatus.failed, "the worker ran out of memory"
        s.add(job)
        s.commit()
    stage = client.get(f"/arenas/{arena_id}/stage", headers=HX).text
    assert 'data-state="stopped"' in stage and "ran out of memory" in stage
    assert "Resume it" in stage


def test_a_plan_refusal_comes_back_in_the_form(client, app, run):
    import json

    (app.state.settings.home / "models" / "tiny-demo" / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16384,
        "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
        "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16"}))
    r = client.post("/arenas", data=form(run, force=""), headers=HX)
    assert r.status_code == 200 and "fit in memory" in r.text and "1.5 TiB" in r.text
    assert 'name="force" checked' not in r.text
