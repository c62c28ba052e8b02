"""Feedback over REST, on answers the server really gave: the fake inference worker answers
/v1 requests (tests/helpers/inference.py), each answer is kept under its chatcmpl id, rated
by that id, listed, counted, flipped, deleted and made into a registered KTO dataset."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from app.inference.chat import save_completion
from app.models import Completion, DatasetEntry, Feedback
from contract.rows import load_kto_dataset
from tests.helpers.inference import Served, serve, wait_for


@pytest.fixture()
def served(tmp_path):
    app, server, thread, url = serve(tmp_path)
    s = Served(app, url)
    yield s
    s.close(server, thread)


def stored(served, cid: str) -> Completion | None:
    with Session(served.app.state.engine) as s:
        return s.get(Completion, cid)


def rate(served, cid: str, label: bool, **more):
    return served.http.post("/api/feedback", json={"completion_id": cid, "label": label,
                                                   **more})


def detail(resp) -> str:
    return " ".join(d["msg"] if isinstance(d, dict) else str(d) for d in
                    (resp.json()["detail"] if isinstance(resp.json()["detail"], list)
                     else [resp.json()["detail"]]))


# --- every answer is kept ------------------------------------------------------------------
def test_answers_are_kept_streamed_or_not_finished_or_cut(served):
    body = served.chat("hello there", model="tiny-demo@job-1", max_tokens=50, seed=4,
                       stop=["zz"]).json()
    row = stored(served, body["id"])  # kept before the answer came back
    assert row.model == "tiny-demo@job-1" and row.answer == "000001: hello there"
    assert row.messages == [{"role": "user", "content": "hello there"}]
    assert row.sampling == {"max_tokens": 50, "temperature": 0.0, "top_p": 1.0, "seed": 4,
                            "stop": ["zz"]}
    assert row.finish_reason == "stop"
    status, events = served.stream("one two three four", max_tokens=2)
    assert status == 200
    row = stored(served, events[0]["id"])
    assert row.answer == "base: one" and row.finish_reason == "length"
    # A client that hangs up mid-answer: what was said is kept, cancelled.
    body = {"model": "tiny-demo", "stream": True, "max_tokens": 500,
            "messages": [{"role": "user", "content": "LONG SLOW"}]}
    with served.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        cid = None
        for line in lines:
            data = json.loads(line[6:]) if line.startswith("data: {") else {}
            if data.get("choices") and data["choices"][0]["delta"].get("content"):
                cid = data["id"]  # a token came: hang up
                break
    assert cid
    row = wait_for(lambda: stored(served, cid), what="the cut answer to be kept")
    assert row.finish_reason == "cancelled" and row.answer.startswith("t0")


def test_only_the_newest_answers_are_kept(served):
    engine = served.app.state.engine
    for i in range(5):
        save_completion(engine, Completion(id=f"chatcmpl-{i}", model="m"), keep=3)
    with Session(engine) as s:
        assert sorted(s.exec(select(Completion.id))) == ["chatcmpl-2", "chatcmpl-3",
                                                         "chatcmpl-4"]
    save_completion(engine, Completion(id="chatcmpl-4", model="m"), keep=3)  # logged only


# --- rating ---------------------------------------------------------------------------------
def test_rate_by_answer_id_list_flip_delete(served):
    a = served.chat("good one", model="tiny-demo@job-1").json()["id"]
    b = served.chat("bad one").json()["id"]
    resp = rate(served, a, True, note="nice")
    assert resp.status_code == 201, resp.text
    [row] = resp.json()["items"]
    assert row["variant"] == "tiny-demo@job-1" and row["model"] == "tiny-demo"
    assert row["job_id"] == 1 and row["adapter"].endswith("000001/adapter")
    assert row["messages"] == [{"role": "user", "content": "good one"}]
    assert row["answer"] == "000001: good one" and row["label"] is True
    assert row["source"] == "playground" and row["completion_id"] == a
    assert row["note"] == "nice" and row["sampling"]["temperature"] == 0.0
    assert row["created_at"].endswith("Z") or row["created_at"].endswith("+00:00")
    bad = rate(served, b, False).json()["items"][0]
    # Rating the same answer again changes its row, not a second one.
    again = rate(served, a, True).json()["items"][0]
    assert again["id"] == row["id"] and again["note"] == "nice"

    resp = served.http.get("/api/feedback")
    assert resp.headers["X-Total-Count"] == "2"
    assert [r["id"] for r in resp.json()] == [bad["id"], row["id"]]  # newest first
    for query, ids in ((("label", "true"),), [row["id"]]), ((("variant", "tiny-demo"),),
                                                            [bad["id"]]), \
            ((("job_id", "1"),), [row["id"]]), ((("model", "tiny-demo"), ("limit", "1"),
                                                 ("offset", "1")), [row["id"]]), \
            ((("source", "api"),), []), ((("since", "2000-01-01T00:00:00Z"),
                                          ("until", "2999-01-01")), [bad["id"], row["id"]]), \
            ((("since", "2999-01-01"),), []):
        resp = served.http.get("/api/feedback", params=dict(query))
        assert [r["id"] for r in resp.json()] == ids, query
    assert served.http.get("/api/feedback", params={"model": "tiny-demo", "limit": 1}
                           ).headers["X-Total-Count"] == "2"
    assert served.http.get("/api/feedback/counts").json() == {
        "total": 2, "desirable": 1, "undesirable": 1,
        "by_variant": {"tiny-demo": {"desirable": 0, "undesirable": 1},
                       "tiny-demo@job-1": {"desirable": 1, "undesirable": 0}}}
    assert served.http.get("/api/feedback/counts", params={"label": "false"}
                           ).json()["total"] == 1

    flipped = served.http.patch(f"/api/feedback/{bad['id']}", json={"label": True})
    assert flipped.status_code == 200 and flipped.json()["label"] is True
    noted = served.http.patch(f"/api/feedback/{bad['id']}", json={"note": "ok after all"})
    assert noted.json()["note"] == "ok after all" and noted.json()["label"] is True
    assert served.http.get(f"/api/feedback/{bad['id']}").json()["note"] == "ok after all"
    assert served.http.delete(f"/api/feedback/{bad['id']}").status_code == 204
    for resp in (served.http.get(f"/api/feedback/{bad['id']}"),
                 served.http.patch(f"/api/feedback/{bad['id']}", json={"label": False}),
                 served.http.delete(f"/api/feedback/{bad['id']}"),
                 served.http.get("/api/feedback/99999999999999999999")):
        assert resp.status_code in (404, 422), resp.text
    assert f"no feedback {bad['id']}" in detail(served.http.get(f"/api/feedback/{bad['id']}"))


def test_correction_is_two_rows(served):
    cid = served.chat("capital of France", model="tiny-demo@job-1").json()["id"]
    resp = rate(served, cid, True, correction="Paris.")
    assert resp.status_code == 201, resp.text
    original, fixed = resp.json()["items"]
    assert original["label"] is False and original["source"] == "playground"
    assert original["answer"] == "000001: capital of France"
    assert fixed["label"] is True and fixed["source"] == "correction"
    assert fixed["answer"] == "Paris." and fixed["messages"] == original["messages"]
    assert fixed["variant"] == "tiny-demo@job-1" and fixed["completion_id"] == cid
    # Correcting again replaces the correction's text.
    again = rate(served, cid, False, correction="Paris, of course.").json()["items"]
    assert [r["id"] for r in again] == [original["id"], fixed["id"]]
    assert again[1]["answer"] == "Paris, of course."
    assert served.http.get("/api/feedback").headers["X-Total-Count"] == "2"


def test_explicit_rating_and_errors(served):
    body = {"model": "tiny-demo@job-1", "messages": [{"role": "user", "content": "hi"}],
            "answer": "hello", "label": False, "sampling": {"temperature": 0.7}}
    resp = served.http.post("/api/feedback", json=body)
    assert resp.status_code == 201, resp.text
    row = resp.json()["items"][0]
    assert row["source"] == "api" and row["job_id"] == 1 and row["label"] is False
    assert row["sampling"] == {"temperature": 0.7} and row["completion_id"] is None

    resp = served.http.post("/api/feedback", json={**body, "model": "no-such-model"})
    assert resp.status_code == 404 and "no-such-model" in detail(resp)
    resp = rate(served, "chatcmpl-gone", True)
    assert resp.status_code == 404
    assert "answer chatcmpl-gone is no longer stored" in detail(resp)
    resp = served.http.post("/api/feedback", json={**body, "colour": "red"})
    assert resp.status_code == 422 and "unknown field 'colour'" in detail(resp)
    assert "completion_id" in detail(resp)
    resp = served.http.post("/api/feedback", json={"label": True})
    assert resp.status_code == 422 and "completion_id" in detail(resp)
    resp = served.http.post("/api/feedback", json={**body, "completion_id": "chatcmpl-x"})
    assert resp.status_code == 422 and "not both" in detail(resp)
    resp = served.http.post("/api/feedback", json={**body, "correction": "  "})
    assert resp.status_code == 422 and "correction is empty" in detail(resp)
    resp = served.http.patch(f"/api/feedback/{row['id']}", json={})
    assert resp.status_code == 422 and "label" in detail(resp)
    resp = served.http.patch(f"/api/feedback/{row['id']}", json={"answer": "x"})
    assert resp.status_code == 422 and "takes label and note" in detail(resp)
    with Session(served.app.state.engine) as s:
        assert len(s.exec(select(Feedback)).all()) == 1  # nothing half-written


# --- datasets -------------------------------------------------------------------------------
def rated(served) -> list[int]:
    """Three answers of the adapter (two 👍, one 👎) and one of the base (👎)."""
    ids = []
    for text, label, model in (("one", True, "tiny-demo@job-1"), ("two", True,
                               "tiny-demo@job-1"), ("three", False, "tiny-demo@job-1"),
                               ("four", False, "tiny-demo")):
        cid = served.chat(text, model=model).json()["id"]
        ids.append(rate(served, cid, label).json()["items"][0]["id"])
    return ids


def test_make_dataset_from_filters_and_ids(served, tmp_path):
    ids = rated(served)
    resp = served.http.post("/api/feedback/dataset", json={"name": "fb-one",
                                                           "variant": "tiny-demo@job-1"})
    assert resp.status_code == 201, resp.text
    d = resp.json()
    assert d["id"] == "fb-one" and d["kind"] == "kto" and d["rows"] == 3
    assert d["source"] == "feedback" and d["format"] == "kto-conversational"
    assert d["stats"]["desirable"] == 2 and d["stats"]["undesirable"] == 1
    assert d["train_url"] == ("/jobs/new?dataset=fb-one&model=tiny-demo&init_adapter=1"
                              f"&desirable_weight={d['stats']['desirable_weight']}"
                              f"&undesirable_weight={d['stats']['undesirable_weight']}")
    rows = load_kto_dataset(d["path"])
    assert [r["label"] for r in rows] == [True, True, False]
    assert rows[0] == {"prompt": [{"role": "user", "content": "one"}],
                       "completion": [{"role": "assistant", "content": "000001: one"}],
                       "label": True}
    listed = served.http.get("/api/datasets/fb-one").json()
    assert listed["rows"] == 3 and listed["stats"]["desirable_weight"] == \
        d["stats"]["desirable_weight"]

    resp = served.http.post("/api/feedback/dataset", json={"name": "fb-two",
                                                           "ids": [ids[3], ids[0]]})
    assert resp.status_code == 201, resp.text
    two = resp.json()
    assert [r["label"] for r in load_kto_dataset(two["path"])] == [True, False]
    assert "model=tiny-demo" in two["train_url"]


def test_merge_with_a_registered_dataset(served, tmp_path):
    rated(served)
    data = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0})
                   + "\n" for i in range(4))
    resp = served.http.post("/api/datasets", params={"name": "base-kto",
                                                     "filename": "base.jsonl"},
                            content=data.encode(),
                            headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    resp = served.http.post("/api/feedback/dataset", json={"name": "merged",
                                                           "merge_with": "base-kto"})
    assert resp.status_code == 201, resp.text
    rows = load_kto_dataset(resp.json()["path"])
    assert len(rows) == 8 and resp.json()["rows"] == 8
    assert rows[0]["prompt"] == [{"role": "user", "content": "q0"}]
    assert rows[4]["completion"] == [{"role": "assistant", "content": "000001: one"}]
    assert sum(r["label"] for r in rows) == 4


def test_dataset_errors_write_nothing(served, tmp_path):
    rated(served)
    datasets = served.app.state.settings.datasets_dir

    def nothing_new(before):
        with Session(served.app.state.engine) as s:
            assert sorted(s.exec(select(DatasetEntry.id))) == before
        assert not [p for p in datasets.iterdir() if p.name not in before]

    with Session(served.app.state.engine) as s:
        before = sorted(s.exec(select(DatasetEntry.id)))
    resp = served.http.post("/api/feedback/dataset", json={"name": "empty", "label": True,
                                                           "source": "arena"})
    assert resp.status_code == 422
    assert "no feedback matches the filters (label=true, source=arena)" in detail(resp)
    nothing_new(before)
    resp = served.http.post("/api/feedback/dataset", json={"name": "m", "merge_with": "nope"})
    assert resp.status_code == 404 and "'nope' does not exist" in detail(resp)
    resp = served.http.post("/api/feedback/dataset", json={"name": "m", "ids": [424242]})
    assert resp.status_code == 404 and "no feedback 424242" in detail(resp)
    resp = served.http.post("/api/feedback/dataset", json={"name": "m", "ids": []})
    assert resp.status_code == 422 and "no feedback matches the ids" in detail(resp)
    resp = served.http.post("/api/feedback/dataset", json={"name": "bad name!"})
    assert resp.status_code == 422 and "letters, digits" in detail(resp)
    resp = served.http.post("/api/feedback/dataset", json={"name": "m", "limit": 3})
    assert resp.status_code == 422 and "unknown field 'limit'" in detail(resp)
    nothing_new(before)
    assert served.http.post("/api/feedback/dataset", json={"name": "taken"}).status_code == 201
    resp = served.http.post("/api/feedback/dataset", json={"name": "taken"})
    assert resp.status_code == 409 and "exists" in detail(resp)
