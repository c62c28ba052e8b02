"""The Models page's Suggested models and the Hugging Face cache through TestClient (issue 15):
GET /api/models/suggested (the seed's presets, a presets file, the plan, the Train link),
GET /api/models/cache (huggingface_hub's scan), DELETE /api/models/cache/{repo_id} and the
page's Delete from cache. A real cache on disk (blobs, snapshots, refs) in a temporary
folder; the whole flow in a browser: tests/browser/test_models_browser.py."""

from __future__ import annotations

import json
import struct
from html import unescape
from pathlib import Path

import pytest
from sqlmodel import Session

from app.hub.presets import PRESETS_FILE_ENV
from app.models import Job, JobStatus, ModelEntry
from app.planner.check import presets as seed_presets
from tests.helpers.hf_cache import add_repo
from tests.helpers.pages import HX, add_job, controls

TINY_SHAPE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 1000, "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(PRESETS_FILE_ENV, raising=False)
    return tmp_path / "hub"


def tiny_model(folder: Path) -> Path:
    """config.json and one safetensors file whose header gives 64*1000 + 64 parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY_SHAPE,
                                                    "architectures": ["LlamaForCausalLM"]}))
    tensors = {"model.embed_tokens.weight": [1000, 64], "model.norm.weight": [64]}
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw
                                               + b"\0" * offset)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def cache_tiny(hub: Path, tmp_path: Path, repo_id: str = "acme/tiny-chat") -> Path:
    return add_repo(hub, repo_id, tiny_model(tmp_path / "src"))


def write_presets(path: Path, entries) -> None:
    path.write_text(json.dumps({"presets": entries}))


# --- GET /api/models/suggested ------------------------------------------------------------------
def test_suggested_lists_the_seed_tables_with_sizes_plans_and_train_links(client):
    body = client.get("/api/models/suggested").json()
    rows = {p["id"]: p for p in body["presets"]}
    assert set(rows) == {p["id"] for p in seed_presets()}
    assert body["problems"] == []
    for p in rows.values():
        assert p["cached"] is False and p["size_on_disk"] is None and p["origin"] == "seed"
        assert p["plan"]["verdict"] in ("fits", "tight", "won't fit")
        assert p["plan"]["summary"].startswith("needs ~") and p["plan"]["summary"].endswith(
            p["plan"]["verdict"])
        assert p["plan"]["need_bytes"] > 0 and p["plan"]["budget_bytes"] > 0
        assert p["train"]["url"].startswith("/jobs/new?model=")
    small = rows["torch-qwen2-0.5b"]
    assert 490e6 < small["params"] < 500e6  # Qwen2-0.5B's published shape
    assert small["download_bytes"] == small["params"] * 2  # 16-bit weights
    assert small["train"]["params"]["learning_rate"] == 5e-7  # the seed's KTO knobs
    assert small["seed_knobs"]["gradient_accumulation_steps"] == 8
    # A 4-bit MLX model downloads about a quarter of that; its Train link opens the seed's
    # MLX LoRA recipe (SFT) with the guide's LoRA learning rate.
    q = rows["mlx-qwen3-14b-4bit"]
    assert q["download_bytes"] < q["params"] * 0.6
    assert q["train"]["method"] == "sft" and q["train"]["params"]["learning_rate"] == 1e-5
    assert q["train"]["params"]["batch_size"] == 2 and "backend=mlx" in q["train"]["url"]
    assert "method=sft" in q["train"]["url"]
    # A bigger model needs more memory than a smaller one on the same backend.
    assert rows["torch-llama-3.1-8b"]["plan"]["need_bytes"] > small["plan"]["need_bytes"]


def test_a_presets_file_adds_and_replaces_presets_and_reports_its_problems(
        client, app, tmp_path, hub_cache):
    home = app.state.settings.home_dir
    write_presets(home / "presets.json", [
        {"id": "my-tiny", "model": "acme/tiny-chat", "title": "Tiny chat",
         "params": {"max_steps": 5, "learning_rate": 1e-4}, "shape": TINY_SHAPE},
        {"id": "torch-qwen2-0.5b", "model": "Qwen/Qwen2-0.5B-Instruct",
         "params": {"per_device_train_batch_size": 1}, "shape": "qwen2-0.5b"},
        {"id": "bad knob", "model": "acme/x"},
        {"id": "no-knob", "model": "acme/x", "params": {"lora_rank": 4}},
        {"id": "no-method", "model": "acme/x", "backend": "mlx", "method": "dpo"},
    ])
    body = client.get("/api/models/suggested").json()
    rows = {p["id"]: p for p in body["presets"]}
    assert body["presets"][0]["id"] == "my-tiny"  # the person's own first
    assert len(body["problems"]) == 3, body["problems"]
    assert "preset 3" in body["problems"][0] and "id" in body["problems"][0]
    assert "no knob lora_rank" in body["problems"][1]
    assert "mlx/dpo is not a training method" in body["problems"][2]
    mine = rows["my-tiny"]
    assert mine["origin"] == "file" and mine["cached"] is False
    assert mine["params"] == 64 * 1000 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128
                                              + 2 * 64) + 64
    assert mine["plan"]["verdict"] == "fits"
    assert "max_steps=5" in mine["train"]["url"] and "learning_rate=0.0001" in mine["train"]["url"]
    assert rows["torch-qwen2-0.5b"]["origin"] == "file"
    assert rows["torch-qwen2-0.5b"]["train"]["params"] == {"per_device_train_batch_size": 1}

    # Once cached: its size on disk, and the plan from its own files.
    cache_tiny(hub_cache, tmp_path)
    mine = {p["id"]: p for p in client.get("/api/models/suggested").json()["presets"]}["my-tiny"]
    assert mine["cached"] is True and mine["path"].startswith(str(hub_cache))
    assert mine["size_on_disk"] > 128_000 and mine["params"] == 64 * 1000 + 64


def test_the_presets_file_setting_and_a_broken_file(client, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere.json"
    monkeypatch.setenv(PRESETS_FILE_ENV, str(other))
    other.write_text("{not json")
    body = client.get("/api/models/suggested").json()
    assert body["presets_file"] == str(other)
    assert len(body["problems"]) == 1 and "not JSON" in body["problems"][0]
    assert len(body["presets"]) == len(seed_presets())  # the seed's still listed
    write_presets(other, [{"id": "x", "model": "acme/no-shape"}])
    row = client.get("/api/models/suggested").json()["presets"][0]
    assert row["plan"]["verdict"] == "unknown" and row["download_bytes"] is None


# --- the cache ----------------------------------------------------------------------------------
def test_cache_lists_repos_with_sizes_revisions_and_incomplete_downloads(client, tmp_path,
                                                                         hub_cache):
    assert client.get("/api/models/cache").json()["repos"] == []  # no cache folder yet
    cache_tiny(hub_cache, tmp_path)
    half = hub_cache / "models--acme--half" / "blobs"
    half.mkdir(parents=True)
    (half / "abc.incomplete").write_bytes(b"x" * 1000)
    body = client.get("/api/models/cache").json()
    repos = {r["repo_id"]: r for r in body["repos"]}
    tiny = repos["acme/tiny-chat"]
    assert tiny["complete"] is True and tiny["repo_type"] == "model" and tiny["nb_files"] == 3
    assert tiny["size_on_disk"] == sum(f.stat().st_size for f in (tmp_path / "src").iterdir())
    assert [r["refs"] for r in tiny["revisions"]] == [["main"]]
    assert repos["acme/half"] == {**repos["acme/half"], "complete": False, "size_on_disk": 1000}
    assert body["total_bytes"] == tiny["size_on_disk"] + 1000
    assert body["cache_dir"] == str(hub_cache)


def test_delete_from_cache_refuses_bad_ids_unknown_repos_and_repos_in_use(app, client, tmp_path,
                                                                          hub_cache):
    snap = cache_tiny(hub_cache, tmp_path)
    assert client.delete("/api/models/cache/acme/nothing").status_code == 404
    r = client.delete("/api/models/cache/acme/.hidden")
    assert r.status_code == 422 and "not a hub id" in r.json()["detail"][0]["msg"]
    r = client.delete("/models/cache/acme/.hidden", headers=HX)  # the page's button
    assert r.status_code == 200
    assert "Delete failed: 'acme/.hidden' is not a hub id" in unescape(r.text)
    job = add_job(app, model="acme/tiny-chat", model_path=str(snap), status=JobStatus.running)
    r = client.delete("/api/models/cache/acme/tiny-chat")
    assert r.status_code == 409 and f"job {job.id} (running)" in r.json()["detail"]
    assert snap.is_dir()
    # A queued job naming the snapshot's path counts too; a finished one does not.
    with_path = add_job(app, model=str(snap), status=JobStatus.queued)
    assert client.delete("/api/models/cache/acme/tiny-chat").status_code == 409
    for j in (job, with_path):
        _finish(app, j.id)
    with Session(app.state.engine) as s:  # as a finished download registers it
        s.add(ModelEntry(id="acme/tiny-chat", path=str(snap), source="hub"))
        s.commit()
    r = client.delete("/api/models/cache/acme/tiny-chat")
    assert r.status_code == 200, r.text
    assert r.json()["freed_bytes"] > 128_000 and len(r.json()["revisions"]) == 1
    assert r.json()["unregistered"] == ["acme/tiny-chat"]
    assert "acme/tiny-chat" not in [m["id"] for m in client.get("/api/models").json()]
    assert not (hub_cache / "models--acme--tiny-chat").exists()
    assert client.get("/api/models/cache").json()["repos"] == []
    assert client.delete("/api/models/cache/acme/tiny-chat").status_code == 404


def test_an_incomplete_download_can_be_deleted(client, hub_cache):
    half = hub_cache / "models--acme--half" / "blobs"
    half.mkdir(parents=True)
    (half / "abc.incomplete").write_bytes(b"x" * 10)
    r = client.delete("/api/models/cache/acme/half")
    assert r.status_code == 200 and r.json()["freed_bytes"] == 10
    assert not half.parent.exists()


def _finish(app, job_id: int) -> None:
    with Session(app.state.engine) as s:
        job = s.get(Job, job_id)
        job.status = JobStatus.succeeded
        s.add(job)
        s.commit()


# --- the page -----------------------------------------------------------------------------------
def test_models_page_shows_suggested_and_cache_and_deletes_after_asking(client, tmp_path,
                                                                        hub_cache):
    cache_tiny(hub_cache, tmp_path)
    html = client.get("/models").text
    assert 'id="suggested-models"' in html and 'id="cached-models"' in html
    assert html.count('data-action="download"') == len(seed_presets())
    assert "Qwen/Qwen2.5-3B-Instruct" in html and "needs ~" in html
    assert 'data-repo="acme/tiny-chat"' in html
    assert 'hx-delete="/models/cache/acme/tiny-chat"' in html and "hx-confirm=" in html
    assert "/jobs/new?model=acme/tiny-chat" in html

    r = client.delete("/models/cache/acme/tiny-chat", headers=HX)
    assert r.status_code == 200 and 'id="models-cache"' in r.text
    assert 'data-repo="acme/tiny-chat"' not in r.text and "was deleted" in r.text
    r = client.delete("/models/cache/acme/tiny-chat", headers=HX)
    assert r.status_code == 200 and "Delete failed" in r.text and "not in the Hugging" in r.text


def test_delete_from_the_page_needs_the_csrf_token(app, tmp_path, hub_cache):
    from fastapi.testclient import TestClient

    cache_tiny(hub_cache, tmp_path)
    bare = TestClient(app, base_url="http://127.0.0.1")
    assert bare.delete("/models/cache/acme/tiny-chat").status_code == 403
    assert (hub_cache / "models--acme--tiny-chat").is_dir()


def test_train_opens_the_form_with_the_model_and_the_seeds_knobs(client):
    rows = {p["id"]: p for p in client.get("/api/models/suggested").json()["presets"]}
    form = controls(client.get(rows["torch-mistral-7b"]["train"]["url"]).text)
    assert form["model_text"]["value"] == "mistralai/Mistral-7B-Instruct-v0.3"
    assert form["method"]["value"] == "torch/kto"
    assert form["params.per_device_train_batch_size"]["value"] == "2"
    assert form["params.gradient_accumulation_steps"]["value"] == "8"
    assert form["params.dtype"]["value"] == "float16"
    form = controls(client.get(rows["mlx-llama-3.2-3b"]["train"]["url"]).text)
    assert form["method"]["value"] == "mlx/sft"  # the seed's MLX tables are LoRA (SFT)
    assert form["params.learning_rate"]["value"] == "1e-05"
    assert form["params.batch_size"]["value"] == "8"
    assert form["params.max_seq_length"]["value"] == "1024"
    assert "checked" in form["params.grad_checkpoint"]


def test_download_from_the_suggested_list_says_why_it_cannot_start(client, monkeypatch):
    """Offline (nothing listens at the hub's address): the section comes back with the
    reason, no job is made. The download itself: tests/browser/test_models_browser.py."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    r = client.post("/models/suggested/download", data={"repo_id": "Qwen/Qwen2-0.5B-Instruct"},
                    headers=HX)
    assert r.status_code == 200 and 'id="models-suggested"' in r.text
    assert "Download of Qwen/Qwen2-0.5B-Instruct refused" in r.text
    r = client.post("/models/suggested/download", data={"repo_id": "no-slash"})
    assert r.status_code == 422 and "Download refused" in r.text
    assert client.get("/api/jobs").json() == []
