"""/api/arenas on the API tier: creation and its refusals, the generate job it queues (its
params and prompts file), ingest of the worker's answers.jsonl, blind pairs, verdicts as
feedback rows, results. No worker runs: the test writes what the generate worker documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from app.models import Arena, ArenaPair, Feedback, Job, JobStatus
from tests.helpers.arena import adapter_run, answer_text, finish_generate

SPLIT = [{"prompt": [{"role": "user", "content": f"held {i}"}],
          "completion": [{"role": "assistant", "content": f"c{i}"}], "label": i % 2 == 0}
         for i in range(4)]


@pytest.fixture()
def home(app) -> Path:
    return app.state.settings.home


@pytest.fixture()
def run(app, home) -> Job:
    with Session(app.state.engine) as s:
        model = s.exec(select(Job)).first()  # none: the home is fresh
        assert model is None
        return adapter_run(s, home, home / "models" / "tiny-demo", split=SPLIT)


def create(client, **body):
    body = {"variant_a": "tiny-demo", "variant_b": "tiny-demo",
            "source": {"kind": "prompts", "prompts": ["one", "two", "three"]},
            "force": True, **body}
    return client.post("/api/arenas", json=body)


def msg(response) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(d["msg"] for d in detail)


def test_create_queues_the_generate_job_with_the_variants_and_prompts(client, app, run):
    r = create(client, variant_a=f"tiny-demo@job-{run.id}", variant_b="tiny-demo",
               source={"kind": "split", "job_id": run.id}, n=3, seed=7, max_tokens=32,
               temperature=0.5)
    assert r.status_code == 201, r.text
    arena = r.json()
    assert arena["variant_a"] == f"tiny-demo@job-{run.id}" and arena["variant_b"] == "tiny-demo"
    assert arena["status"] == "queued" and arena["ready"] is False and arena["n"] == 3
    assert arena["source"] == f"held-out split of job {run.id}"
    assert arena["source_job_id"] == run.id and arena["seed"] == 7
    with Session(app.state.engine) as s:
        job = s.get(Job, arena["job_id"])
        assert job.method == "generate" and job.backend == "torch" and job.model == "tiny-demo"
        assert job.params["adapter_a"] == run.adapter_path and job.params["adapter_b"] == ""
        assert job.params["max_tokens"] == 32 and job.params["temperature"] == 0.5
        assert job.params["seed"] == 7 and job.total_steps == 6
        lines = [json.loads(x) for x in Path(job.dataset).read_text().splitlines()]
    assert len(lines) == 3
    held = {f"held {i}" for i in range(4)}
    assert {line["messages"][0]["content"] for line in lines} < held
    assert all(line["messages"][0]["role"] == "user" for line in lines)


def test_dataset_prompts_are_distinct_seeded_and_n(client, app):
    a = create(client, source={"kind": "dataset", "dataset": "demo-kto"}, n=5, seed=1).json()
    b = create(client, source={"kind": "dataset", "dataset": "demo-kto"}, n=5, seed=1).json()
    with Session(app.state.engine) as s:
        first, second = (Path(s.get(Job, x["job_id"]).dataset).read_text() for x in (a, b))
    assert first == second  # same seed, same prompts in the same order
    prompts = [json.loads(x)["messages"][0]["content"] for x in first.splitlines()]
    assert len(prompts) == len(set(prompts)) == 5 and set(prompts) <= {f"q{i}" for i in range(8)}
    assert a["source"] == "dataset demo-kto"


def test_pasted_prompts_one_user_message_each(client, app):
    r = create(client, source={"kind": "prompts", "prompts": ["  hi  ", "", "there"]})
    assert r.status_code == 201
    with Session(app.state.engine) as s:
        text = Path(s.get(Job, r.json()["job_id"]).dataset).read_text()
    assert [json.loads(x)["messages"] for x in text.splitlines()] == [
        [{"role": "user", "content": "hi"}], [{"role": "user", "content": "there"}]]


@pytest.mark.parametrize("body, status, words", [
    ({"variant_a": "nope"}, 404, "unknown model 'nope'"),
    ({"variant_b": "tiny-demo@job-999"}, 404, "there is no job 999"),
    ({"source": {"kind": "prompts", "prompts": ["", "  "]}}, 422, "gave no prompts"),
    ({"source": {"kind": "dataset", "dataset": "nope"}}, 404, "no registered dataset 'nope'"),
    ({"source": {"kind": "split", "job_id": 999}}, 404, "job 999 does not exist"),
    ({"source": {"kind": "other"}}, 422, "kind"),
    ({"n": 0}, 422, "greater than or equal to 1"),
    ({"n": 501}, 422, "less than or equal to 500"),
    ({"colour": "red"}, 422, "colour"),
    ({"source": {"kind": "prompts", "prompts": ["x"], "extra": 1}}, 422, "extra"),
])
def test_create_refusals(client, body, status, words):
    r = create(client, **body)
    assert r.status_code == status, r.text
    assert words in r.text


def test_a_run_without_a_split_is_refused_with_the_fix(client, app, home):
    with Session(app.state.engine) as s:
        bare = adapter_run(s, home, home / "models" / "tiny-demo")
    r = create(client, source={"kind": "split", "job_id": bare.id})
    assert r.status_code == 422
    assert f"job {bare.id} held out no rows: train it with eval_fraction > 0" in msg(r)


def test_mixed_backends_are_refused_naming_both(client, app, home, run):
    with Session(app.state.engine) as s:
        mlx = adapter_run(s, home, home / "models" / "tiny-demo", backend="mlx")
    a, b = f"tiny-demo@job-{run.id}", f"tiny-demo@job-{mlx.id}"
    r = create(client, variant_a=a, variant_b=b)
    assert r.status_code == 422, r.text
    assert a in msg(r) and b in msg(r) and "share a backend" in msg(r)


def test_a_base_model_follows_the_adapters_backend(client, app, home):
    with Session(app.state.engine) as s:
        mlx = adapter_run(s, home, home / "models" / "tiny-demo", backend="mlx")
    r = create(client, variant_a="tiny-demo", variant_b=f"tiny-demo@job-{mlx.id}")
    if r.status_code == 422:  # mlx-lm not installed here: the message says so
        assert "mlx" in msg(r)
        return
    assert r.status_code == 201, r.text
    with Session(app.state.engine) as s:
        assert s.get(Job, r.json()["job_id"]).backend == "mlx"


def test_review_flow_blind_pairs_verdicts_feedback_results(client, app, run):
    arena = create(client, variant_a=f"tiny-demo@job-{run.id}", variant_b="tiny-demo",
                   source={"kind": "prompts", "prompts": ["p0", "p1", "p2", "p3"]},
                   seed=3).json()
    r = client.get(f"/api/arenas/{arena['id']}/next")
    assert r.status_code == 409 and "still being generated" in msg(r)
    with Session(app.state.engine) as s:
        finish_generate(s, arena["job_id"], torn=True)
    seen = {}
    for side in ("left", "right", "both_good", "both_bad"):
        r = client.get(f"/api/arenas/{arena['id']}/next")
        assert r.status_code == 200, r.text
        pair = r.json()
        assert set(pair) == {"pair_id", "index", "messages", "left", "right"}
        assert "tiny-demo" not in r.text and "job-" not in r.text  # blind
        assert pair["messages"] == [{"role": "user", "content": f"p{pair['index']}"}]
        assert {pair["left"], pair["right"]} == {answer_text("a", pair["index"]),
                                                 answer_text("b", pair["index"])}
        seen[pair["index"]] = (side, pair["left"] == answer_text("a", pair["index"]))
        v = client.post(f"/api/arenas/{arena['id']}/pairs/{pair['pair_id']}/verdict",
                        json={"verdict": side})
        assert v.status_code == 200, v.text
        assert len(v.json()["feedback_ids"]) == 2
    assert client.get(f"/api/arenas/{arena['id']}/next").status_code == 204
    assert sorted(seen) == [0, 1, 2, 3]
    with Session(app.state.engine) as s:
        pairs = s.exec(select(ArenaPair).where(ArenaPair.arena_id == arena["id"])).all()
        assert len(pairs) == 4  # ingested once, the torn line skipped
        rows = s.exec(select(Feedback).where(Feedback.source == "arena")).all()
    assert len(rows) == 8
    expect = {"left": ("a", "b"), "right": ("b", "a")}
    wins = losses = 0
    for p in pairs:
        side, a_left = seen[p.index]
        assert p.a_on_left == a_left
        if side in expect:
            winner = expect[side][0] if a_left else expect[side][1]
            assert p.verdict == winner
            wins, losses = wins + (winner == "a"), losses + (winner == "b")
        else:
            assert p.verdict == side
        mine = [f for f in rows if f.arena_pair_id == p.id]
        by = {f.variant: f for f in mine}
        fa, fb = by[f"tiny-demo@job-{run.id}"], by["tiny-demo"]
        assert fa.answer == p.answer_a and fb.answer == p.answer_b
        assert fa.adapter == run.adapter_path and fa.job_id == run.id and fa.model == "tiny-demo"
        assert fb.adapter == "" and fb.job_id is None
        assert fa.messages == p.messages and fa.sampling["seed"] == 3
        labels = {"a": (True, False), "b": (False, True), "both_good": (True, True),
                  "both_bad": (False, False)}[p.verdict]
        assert (fa.label, fb.label) == labels
    res = client.get(f"/api/arenas/{arena['id']}/results").json()
    assert res["wins"] == wins and res["losses"] == losses and res["ties"] == 2
    assert res["judged"] == 4 and res["win_rate"] == pytest.approx((wins + 1) / 4)
    assert res["ci_low"] < res["win_rate"] < res["ci_high"]
    info = client.get(f"/api/arenas/{arena['id']}").json()
    assert info["judged"] == info["total"] == 4 and info["status"] == "succeeded"
    assert [a["id"] for a in client.get("/api/arenas").json()] == [arena["id"]]


def test_a_new_verdict_replaces_the_pairs_feedback(client, app):
    arena = create(client).json()
    with Session(app.state.engine) as s:
        finish_generate(s, arena["job_id"])
    pair = client.get(f"/api/arenas/{arena['id']}/next").json()
    url = f"/api/arenas/{arena['id']}/pairs/{pair['pair_id']}/verdict"
    first = client.post(url, json={"verdict": "left"}).json()
    second = client.post(url, json={"verdict": "both_bad"}).json()
    assert second["verdict"] == "both_bad" and second["judged"] == 1
    with Session(app.state.engine) as s:
        rows = s.exec(select(Feedback).where(Feedback.arena_pair_id == pair["pair_id"])).all()
    assert sorted(r.id for r in rows) == sorted(second["feedback_ids"])
    assert not set(first["feedback_ids"]) & {r.id for r in rows}
    assert [r.label for r in rows] == [False, False]


def test_pairs_only_for_prompts_both_answered_and_ingest_is_idempotent(client, app):
    arena = create(client).json()
    with Session(app.state.engine) as s:
        finish_generate(s, arena["job_id"], skip={(1, "b")})
    for _ in range(3):
        assert client.get(f"/api/arenas/{arena['id']}").json()["total"] == 2
    with Session(app.state.engine) as s:
        indices = s.exec(select(ArenaPair.index).where(ArenaPair.arena_id == arena["id"]))
        assert sorted(indices.all()) == [0, 2]


def test_a_failed_job_says_to_resume_it(client, app):
    arena = create(client).json()
    with Session(app.state.engine) as s:
        job = s.get(Job, arena["job_id"])
        job.status, job.error = JobStatus.failed, "out of memory"
        s.add(job)
        s.commit()
    r = client.get(f"/api/arenas/{arena['id']}/next")
    assert r.status_code == 409
    assert "failed: out of memory" in msg(r) and "resume" in msg(r)


def test_404s_and_bad_verdicts(client, app):
    assert client.get("/api/arenas/999").status_code == 404
    assert client.get("/api/arenas/999/next").status_code == 404
    assert client.get("/api/arenas/999/results").status_code == 404
    arena = create(client).json()
    with Session(app.state.engine) as s:
        finish_generate(s, arena["job_id"])
    pair = client.get(f"/api/arenas/{arena['id']}/next").json()
    r = client.post(f"/api/arenas/{arena['id']}/pairs/99999/verdict", json={"verdict": "left"})
    assert r.status_code == 404 and "no pair 99999" in r.text
    other = create(client).json()
    r = client.post(f"/api/arenas/{other['id']}/pairs/{pair['pair_id']}/verdict",
                    json={"verdict": "left"})
    assert r.status_code == 404
    url = f"/api/arenas/{arena['id']}/pairs/{pair['pair_id']}/verdict"
    assert client.post(url, json={"verdict": "a"}).status_code == 422
    assert client.post(url, json={"verdict": "left", "x": 1}).status_code == 422
    res = client.get(f"/api/arenas/{arena['id']}/results").json()
    assert res["judged"] == 0 and res["win_rate"] is None


def test_deleting_the_job_deletes_the_arena(client, app):
    arena = create(client).json()
    assert client.delete(f"/api/jobs/{arena['job_id']}").status_code == 204
    with Session(app.state.engine) as s:
        assert s.get(Arena, arena["id"]) is None


def test_a_generate_job_that_wont_fit_is_a_409_with_the_numbers(client, app, home):
    (home / "models" / "tiny-demo" / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16384,
        "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
        "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16"}))
    r = create(client, force=False)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == "plan" and "won't fit in memory" in detail["msg"]
    assert "force" in detail["msg"] and detail["plan"]["estimate"]["total_bytes"] > 2**40
    with Session(app.state.engine) as s:
        assert s.exec(select(Arena)).first() is None and s.exec(select(Job)).first() is None
    assert create(client, force=True).status_code == 201
