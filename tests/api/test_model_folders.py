"""Your own model folders and MLX conversion through the API (app/web/api/model_folders.py,
app/jobs/model_folders.py): what a folder must hold, where it may be, duplicates, unregistering
(files stay; not while a job uses it) and a convert job's bad input. TestClient, no lifespan:
no worker starts (tests/integration/test_mlx_convert.py runs the conversions)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from sqlmodel import Session

from app.models import Job, JobStatus

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32,
         "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
         "torch_dtype": "float32"}


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], mlx=False) -> None:
    """A real safetensors file of zeros: the header the inspector reads, then the bytes."""
    sizes = {"F32": 4, "U32": 4, "F16": 2, "BF16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if mlx:
        header["__metadata__"] = {"format": "mlx"}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def model_folder(root: Path, name="my-model", config=None, tokenizer=True, weights=True,
                 mlx=False) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if config is not False:
        (folder / "config.json").write_text(json.dumps(config or LLAMA))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
        (folder / "tokenizer_config.json").write_text("{}")
    if weights:
        tensors = {"model.embed_tokens.weight": ("F32", [32, 64])}
        if mlx:
            tensors = {"model.embed_tokens.weight": ("U32", [32, 8]),
                       "model.embed_tokens.scales": ("F16", [32, 1]),
                       "model.embed_tokens.biases": ("F16", [32, 1])}
        safetensors(folder / "model.safetensors", tensors, mlx=mlx)
    return folder


def error(resp, status=422) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["detail"][0]


def models(client) -> dict[str, dict]:
    return {m["id"]: m for m in client.get("/api/models").json()}


def test_a_saved_folder_registers_and_is_described(client, tmp_path):
    folder = model_folder(tmp_path / "mine")
    resp = client.post("/api/models", json={"path": str(folder), "name": "mine"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"] == "mine" and body["source"] == "local" and body["path"] == str(folder)
    assert body["format"] == "transformers" and body["quantization"] is None
    assert body["architecture"] == "LlamaForCausalLM" and body["params"] == 32 * 64
    assert body["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    assert models(client)["mine"]["path"] == str(folder)


def test_the_name_defaults_to_the_folder_and_an_mlx_folder_says_its_bits(client, tmp_path):
    q = {**LLAMA, "quantization": {"group_size": 64, "bits": 4, "mode": "affine"}}
    folder = model_folder(tmp_path, "Qwen 4bit (mine)", config=q, mlx=True)
    body = client.post("/api/models", json={"path": str(folder)}).json()
    assert body["id"] == "Qwen-4bit-mine"
    assert body["format"] == "mlx" and body["quantization"] == {"bits": 4, "group_size": 64}
    assert body["params"] == 32 * 64  # 8 uint32 words of 8 four-bit weights per row


def test_duplicates_are_409(client, tmp_path):
    folder = model_folder(tmp_path)
    assert client.post("/api/models", json={"path": str(folder), "name": "a"}).status_code == 201
    other = model_folder(tmp_path, "other")
    assert "registered already" in error(client.post(
        "/api/models", json={"path": str(other), "name": "a"}), 409)["msg"]
    assert "registered already, as 'a'" in error(client.post(
        "/api/models", json={"path": str(folder) + "/", "name": "b"}), 409)["msg"]
    assert "tiny-demo" in models(client) and set(models(client)) == {"tiny-demo", "a"}


@pytest.mark.parametrize("pieces,missing", [
    ({"config": False}, ["config.json"]),
    ({"tokenizer": False}, ["tokenizer files"]),
    ({"weights": False}, ["weights"]),
    ({"tokenizer": False, "weights": False}, ["tokenizer files", "weights"]),
])
def test_a_folder_missing_pieces_is_422_listing_them(client, tmp_path, pieces, missing):
    folder = model_folder(tmp_path, **pieces)
    err = error(client.post("/api/models", json={"path": str(folder)}))
    assert err["field"] == "path" and len(err["missing"]) == len(missing)
    for want, got in zip(missing, err["missing"], strict=True):
        assert got.startswith(want) and want in err["msg"]
    assert "my-model" not in models(client)


@pytest.mark.parametrize("path,says", [
    ("relative/folder", "relative path"),
    ("/etc", "outside the folders Prospect may read"),
    ("", "absolute path of a model folder"),
    ("{home}/nowhere", "is not a folder"),
    ("{home}/a\u0000b", "NUL"),
])
def test_where_the_folder_may_be(client, tmp_path, path, says):
    err = error(client.post("/api/models", json={"path": path.format(home=tmp_path)}))
    assert err["field"] == "path" and says in err["msg"]


def test_a_bad_name_and_unknown_fields_are_422(client, tmp_path):
    folder = model_folder(tmp_path)
    err = error(client.post("/api/models", json={"path": str(folder), "name": "../x"}))
    assert err["field"] == "name" and "letters, digits" in err["msg"]
    assert client.post("/api/models", json={"path": str(folder), "x": 1}).status_code == 422


def test_unregister_keeps_the_files_and_waits_for_jobs(app, client, tmp_path):
    folder = model_folder(tmp_path)
    client.post("/api/models", json={"path": str(folder), "name": "mine"})
    with Session(app.state.engine) as s:
        job = Job(name="uses it", backend="mlx", method="kto", model="mine", dataset="demo-kto",
                  model_path=str(folder), status=JobStatus.running)
        s.add(job)
        s.commit()
        job_id = job.id
    err = error(client.delete("/api/models/mine"), 409)
    assert f"job {job_id} (running) uses mine" in err["msg"]
    with Session(app.state.engine) as s:
        s.get(Job, job_id).status = JobStatus.succeeded
        s.commit()
    resp = client.delete("/api/models/mine")
    assert resp.status_code == 200 and resp.json() == {"id": "mine", "removed": True,
                                                       "files_kept": str(folder)}
    assert "mine" not in models(client) and (folder / "model.safetensors").is_file()
    assert error(client.delete("/api/models/mine"), 404)["msg"] == "no registered model 'mine'"
    assert client.delete("/api/models/tiny-demo").status_code == 200  # init adds it back


def test_convert_queues_an_mlx_job(client, tmp_path):
    folder = model_folder(tmp_path)
    client.post("/api/models", json={"path": str(folder), "name": "mine"})
    resp = client.post("/api/models/mine/convert", json={"q_bits": 8, "q_group_size": 32})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert (job["backend"], job["method"], job["model"]) == ("mlx", "convert", "mine")
    assert job["params"] == {"q_bits": 8, "q_group_size": 32, "dtype": "auto",
                             "name": "mine-8bit"}
    assert job["model_path"] == str(folder) and job["dataset_path"] == ""
    again = client.post("/api/models/mine/convert", json={}).json()  # the defaults: 4-bit, 64
    assert again["params"] == {"q_bits": 4, "q_group_size": 64, "dtype": "auto",
                               "name": "mine-4bit"}
    third = client.post("/api/models/mine/convert").json()
    assert third["params"]["name"] == "mine-4bit-2"  # the first is still queued
    plain = client.post("/api/models/mine/convert", json={"q_bits": 0, "dtype": "bfloat16"})
    assert plain.json()["params"]["name"] == "mine-mlx"


@pytest.mark.parametrize("body,field,says", [
    ({"q_bits": 3}, "q_bits", "must be 4 or 8 (or 0: no quantization), got 3"),
    ({"q_bits": 16}, "q_bits", "must be 4 or 8 (or 0: no quantization), got 16"),
    ({"q_group_size": 17}, "q_group_size", "must be 32, 64 or 128, got 17"),
    ({"q_group_size": "x"}, "q_group_size", "valid integer"),
    ({"dtype": "int8"}, "dtype", "must be one of auto, float16, bfloat16, float32"),
    ({"name": "a/b"}, "name", "letters, digits"),
    ({"name": "tiny-demo"}, "name", "exists already"),
])
def test_convert_bad_input_is_422_naming_the_field(client, tmp_path, body, field, says):
    folder = model_folder(tmp_path)
    client.post("/api/models", json={"path": str(folder), "name": "mine"})
    err = error(client.post("/api/models/mine/convert", json=body))
    assert err["field"] == field and says in err["msg"], err


def test_convert_refuses_what_is_not_a_transformers_model(client, tmp_path):
    # The API tier's demo folder holds only an empty config.json.
    err = error(client.post("/api/models/tiny-demo/convert", json={}))
    assert err["field"] == "model" and "not a transformers model folder" in err["msg"]
    q = {**LLAMA, "quantization": {"group_size": 64, "bits": 4}}
    client.post("/api/models", json={"path": str(model_folder(tmp_path, "q", config=q,
                                                               mlx=True))})
    err = error(client.post("/api/models/q/convert", json={}))
    assert "quantized already (4-bit)" in err["msg"]
    no_type = {k: v for k, v in LLAMA.items() if k != "model_type"}
    client.post("/api/models", json={"path": str(model_folder(tmp_path, "nt", config=no_type))})
    assert "names no model_type" in error(client.post("/api/models/nt/convert"))["msg"]
    err = error(client.post("/api/models/nobody/convert", json={}))
    assert err["field"] == "model"
    err = error(client.post("/api/models/someone/uncached-model/convert", json={}))
    assert err["field"] == "model" and "hf download" in err["msg"]


def test_a_folder_in_the_models_dir_blocks_the_name(app, client, tmp_path):
    folder = model_folder(tmp_path)
    client.post("/api/models", json={"path": str(folder), "name": "mine"})
    (tmp_path / "models" / "taken").mkdir(parents=True)
    err = error(client.post("/api/models/mine/convert", json={"name": "taken"}))
    assert err["field"] == "name" and "exists already" in err["msg"]


def test_a_downloaded_model_whose_id_has_a_slash_can_be_removed(app, client, tmp_path):
    """A finished download registers its hub id (org/name): Remove reaches it on the API and
    on the page, and the cache's own delete route (/models/cache/…) is not taken for it."""
    from app.models import ModelEntry

    folder = model_folder(tmp_path, name="snap")
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="acme/tiny-chat", path=str(folder), source="hub"))
        s.commit()
    assert client.delete("/api/models/cache/acme/tiny-chat").status_code == 404  # not cached
    assert "acme/tiny-chat" in models(client)
    resp = client.delete("/models/acme/tiny-chat")
    assert resp.status_code == 200, resp.text
    assert "acme/tiny-chat" not in models(client) and (folder / "config.json").is_file()
    with Session(app.state.engine) as s:
        s.add(ModelEntry(id="acme/tiny-chat", path=str(folder), source="hub"))
        s.commit()
    assert client.delete("/api/models/acme/tiny-chat").json()["removed"] is True
