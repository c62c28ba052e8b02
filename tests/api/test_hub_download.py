"""POST /api/models/download in-process, against the loopback hub (tests/helpers/fake_hub.py)
over real HTTP: the pre-check (files a model needs, sizes, free disk, the planner's verdict),
the hub's refusals (404, gated, offline) and bad requests. No worker starts here (TestClient
runs no supervisor): tests/integration/test_hub_download.py runs the download itself."""

from __future__ import annotations

import json
import time

import pytest
from sqlmodel import Session

from app.models import Job, ModelEntry
from app.units import fmt_bytes
from tests.helpers.fake_hub import FakeHub
from tests.helpers.server import free_port

QWEN_SHAPE = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
              "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16"}
SECRET = "hf_" + "Sekr3t" * 6
FILES = {
    "config.json": json.dumps(QWEN_SHAPE).encode(),
    "tokenizer.json": b"{}" * 500,
    "tokenizer_config.json": b'{"chat_template": "x"}',
    "model.safetensors": b"\0" * 300_000,
    "pytorch_model.bin": b"\1" * 200_000,  # a duplicate copy: not fetched
    "model.gguf": b"\2" * 100_000,
    "onnx/model.onnx": b"\3" * 100_000,
    "README.md": b"# tiny",
    "modeling_tiny.py": b"print('remote code')",
}


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    with FakeHub() as hub:
        hub.add("acme/tiny", FILES)
        hub.add("acme/gated", FILES, gated=True)
        hub.add("acme/bin-only", {k: v for k, v in FILES.items() if k != "model.safetensors"})
        hub.add("acme/gguf-only", {"config.json": FILES["config.json"],
                                   "model.gguf": FILES["model.gguf"]})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_TOKEN", SECRET)  # a token the hub does not accept
        yield hub


def post(client, body):
    r = client.post("/api/models/download", json=body)
    return r.status_code, r.json(), r.text


def test_a_download_job_fetches_only_what_a_model_needs(client, app, hub):
    status, body, _ = post(client, {"repo_id": "acme/tiny"})
    assert status == 201, body
    job, check = body["job"], body["check"]
    assert (job["backend"], job["method"], job["model"]) == ("hub", "download", "acme/tiny")
    names = [f["name"] for f in check["files"]]
    assert sorted(names) == ["config.json", "model.safetensors", "tokenizer.json",
                             "tokenizer_config.json"]
    assert job["params"]["allow_patterns"] == names
    assert {"pytorch_model.bin", "model.gguf", "onnx/model.onnx", "modeling_tiny.py"} <= set(
        check["skipped"])
    assert check["total_bytes"] == sum(len(FILES[n]) for n in names)
    assert check["needed_bytes"] == check["total_bytes"] and check["free_bytes"] > 0
    assert check["plan"]["verdict"] in ("fits", "tight", "no_fit") and \
        check["plan"]["backend"] == "torch", check["plan"]  # from the hub's config.json
    assert check["commit"] == hub.repos["acme/tiny"].sha
    with Session(app.state.engine) as s:
        assert s.get(Job, job["id"]).params["revision"] == "main"
    # the token went to the hub, and nowhere back
    assert f"Bearer {SECRET}" in hub.auth_seen and SECRET not in json.dumps(body)
    # the same model again while its job is queued: refused, naming the job
    status, again, _ = post(client, {"repo_id": "acme/tiny"})
    assert status == 409 and f"job {job['id']}" in again["detail"]


def test_bin_weights_only_when_a_repo_has_no_safetensors(client, hub):
    status, body, _ = post(client, {"repo_id": "acme/bin-only", "revision": "main"})
    assert status == 201, body
    assert "pytorch_model.bin" in [f["name"] for f in body["check"]["files"]]
    status, body, _ = post(client, {"repo_id": "acme/gguf-only"})
    assert status == 422 and "no weights Prospect can load" in body["detail"], body


def test_a_repo_the_hub_does_not_know_is_a_404_naming_it(client, hub):
    status, body, text = post(client, {"repo_id": "acme/nope"})
    assert status == 404, body
    assert "no model acme/nope" in body["detail"] and "HF_TOKEN" in body["detail"]
    assert SECRET not in text
    status, body, _ = post(client, {"repo_id": "acme/tiny", "revision": "v9"})
    assert status == 404 and "no such revision" in body["detail"], body


def test_a_gated_repo_says_what_the_hub_said_and_where_a_token_goes(client, hub):
    status, body, text = post(client, {"repo_id": "acme/gated"})
    assert status == 403, body
    detail = body["detail"]
    assert "acme/gated is gated" in detail and "Access to model acme/gated is restricted" \
        in detail
    assert "HF_TOKEN" in detail and "hf auth login" in detail
    assert SECRET not in text and f"Bearer {SECRET}" in hub.auth_seen
    hub.tokens = (SECRET,)  # granted: the same request goes through
    assert post(client, {"repo_id": "acme/gated"})[0] == 201


def test_a_token_the_hub_calls_invalid_is_named_as_such_never_shown(client, hub):
    hub.bad_tokens = (SECRET,)
    status, body, text = post(client, {"repo_id": "acme/tiny"})
    assert status == 403, body
    assert "refused the token" in body["detail"] and "HF_TOKEN" in body["detail"]
    assert SECRET not in text


def test_a_download_the_disk_cannot_hold_is_refused_with_the_numbers(client, hub,
                                                                      monkeypatch):
    monkeypatch.setattr("app.hub.download.free_bytes", lambda path: 100_000)
    status, body, _ = post(client, {"repo_id": "acme/tiny"})
    assert status == 409, body
    assert body["free_bytes"] == 100_000 and body["needed_bytes"] > 300_000
    needs = fmt_bytes(body["needed_bytes"])
    assert f"needs {needs}, 97.7 KiB free on the disk of" in body["detail"], body["detail"]
    assert body["cache_dir"] in body["detail"]


def test_offline_is_a_clear_503_at_once(client, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    began = time.monotonic()
    status, body, _ = post(client, {"repo_id": "acme/tiny"})
    assert status == 503, body
    assert time.monotonic() - began < 5
    assert "cannot reach the hub at 127.0.0.1:" in body["detail"] and "offline" in \
        body["detail"]


def test_a_model_in_the_cache_already_is_a_200_with_its_folder(client, app, hub, tmp_path):
    repo = hub.repos["acme/tiny"]
    snap = tmp_path / "hf-cache" / "models--acme--tiny" / "snapshots" / repo.sha
    snap.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors"):
        (snap / name).write_bytes(FILES[name])
    status, body, _ = post(client, {"repo_id": "acme/tiny"})
    assert status == 200 and body["cached"] is True, body
    assert body["path"] == str(snap) and "nothing to download" in body["message"]
    with Session(app.state.engine) as s:
        entry = s.get(ModelEntry, "acme/tiny")
        assert entry.path == str(snap) and entry.source == "hub"


@pytest.mark.parametrize("body, field", [
    ({"repo_id": "not-a-hub-id"}, "repo_id"),
    ({"repo_id": "../../etc"}, "repo_id"),
    ({"repo_id": "acme/../x"}, "repo_id"),
    ({"repo_id": "acme/tiny/extra"}, "repo_id"),
    ({"repo_id": "  "}, "repo_id"),
    ({"repo_id": "a" * 300}, "repo_id"),
    ({"repo_id": 5}, "repo_id"),
    ({}, "repo_id"),
    ({"repo_id": "acme/tiny", "revision": "has space"}, "revision"),
    ({"repo_id": "acme/tiny", "revision": "../main"}, "revision"),
    ({"repo_id": "acme/tiny", "revision": 3}, "revision"),
    ({"repo_id": "acme/tiny", "extra": 1}, "extra"),
])
def test_bad_requests_are_422_naming_the_field(client, hub, body, field):
    before = len(hub.requests)
    status, answer, _ = post(client, body)
    assert status == 422, answer
    assert field in json.dumps(answer["detail"]), answer
    assert len(hub.requests) == before  # refused before asking the hub
