"""The REST contract against the real server: bad input gets a 4xx that names the fix."""

import pytest


def job(**over):
    body = {"name": "t", "backend": "torch", "method": "kto", "model": "tiny-demo",
            "dataset": "demo-kto", "params": {"max_steps": 2}}
    body.update(over)
    return body


def problem(resp):
    status, body = resp
    return status, body["detail"][0]["field"], body["detail"][0]["msg"]


@pytest.mark.parametrize("body, field, words", [
    (job(params={"batch": 4}), "params.batch", "unknown parameter"),
    (job(params={"per_device_train_batch_size": 1}), "params.per_device_train_batch_size",
     "at least 2"),
    (job(model="/nonexistent/model-folder"), "model", "outside the folders"),
    (job(dataset="/nonexistent/data.jsonl"), "dataset", "outside the folders"),
    (job(method="dpo"), "method", "torch/kto"),
    (job(model=""), "model", "choose a model"),
    (job(model="not a model id!"), "model", "hub id"),
    (job(dataset="relative/data.jsonl"), "dataset", "absolute path"),
    ({**job(), "gpu": 1}, "gpu", "unknown field"),
    (job(params="fast"), "params", "dict"),
])
def test_invalid_jobs_get_422_naming_the_field(live_server, body, field, words):
    status, got_field, msg = problem(live_server.post("/api/jobs", body))
    assert status == 422 and got_field == field
    assert words in msg


def test_missing_folder_and_file_inside_home_are_named(live_server):
    missing = live_server.home / "models" / "nope"
    status, field, msg = problem(live_server.post("/api/jobs", job(model=str(missing))))
    assert (status, field) == (422, "model") and "does not exist" in msg
    missing = live_server.home / "datasets" / "nope.jsonl"
    status, field, msg = problem(live_server.post("/api/jobs", job(dataset=str(missing))))
    assert (status, field) == (422, "dataset") and "does not exist" in msg


def test_unknown_job_is_404_and_nothing_is_created(live_server):
    before = len(live_server.get("/api/jobs"))
    assert live_server.request("GET", "/api/jobs/999999")[0] == 404
    assert live_server.post("/api/jobs/999999/cancel")[0] == 404
    assert len(live_server.get("/api/jobs")) == before


def test_foreign_host_and_origin_are_refused(live_server):
    status, body = live_server.request("GET", "/api/jobs", headers={"Host": "evil.example"})
    assert status == 421 and "not served here" in body["detail"]
    status, body = live_server.request("POST", "/api/jobs", job(),
                                       headers={"Origin": "http://evil.example"})
    assert status == 403
    status, _ = live_server.request("POST", "/api/jobs", job(params={"batch": 1}),
                                    headers={"Origin": live_server.url})
    assert status == 422  # our own origin gets through to validation


def test_demo_assets_are_registered(live_server):
    assert "tiny-demo" in [m["id"] for m in live_server.get("/api/models")]
    [ds] = [d for d in live_server.get("/api/datasets") if d["id"] == "demo-kto"]
    assert ds["id"] == "demo-kto" and ds["rows"] >= 200
    methods = {(m["backend"], m["method"]): m for m in live_server.get("/api/methods")}
    assert set(methods) == {("torch", "kto"), ("mlx", "sft"), ("mlx", "kto"), ("torch", "fuse"),
                            ("mlx", "fuse"), ("torch", "generate"), ("mlx", "generate"),
                            ("mlx", "convert"), ("hub", "download")}
    kto = methods[("torch", "kto")]
    assert {p["name"] for p in kto["params"]} >= {"beta", "per_device_train_batch_size", "r"}


def test_a_malformed_dataset_is_refused_with_its_row_number(live_server):
    bad = live_server.home / "datasets" / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b", "label": true}\n'
                   '{"prompt": "a", "completion": "b", "label": "yes"}\n')
    status, field, msg = problem(live_server.post("/api/jobs", job(dataset=str(bad))))
    assert (status, field) == (422, "dataset") and "row 2" in msg


def test_a_dataset_with_one_label_is_refused(live_server):
    one = live_server.home / "datasets" / "one-label.jsonl"
    one.write_text('{"prompt": "a", "completion": "b", "label": true}\n' * 4)
    status, field, msg = problem(live_server.post("/api/jobs", job(dataset=str(one))))
    assert (status, field) == (422, "dataset") and "needs both labels" in msg
