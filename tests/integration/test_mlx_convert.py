"""Converting a model for MLX through the server (POST /api/models/{id}/convert): a real MLX
worker runs mlx_lm.convert, the model is registered with its bits, group size and size, loads
with mlx_lm.load and generates, and the planner plans a job on it. Also a randomly initialised
model of a published shape (Qwen2-0.5B's widths, 2 of its 24 blocks), registered as your own
folder first, and a cancel while converting (the partial folder goes)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from app.hub.folders import describe_entry
from app.models import ModelEntry
from tests.helpers.hf_cache import make_cache
from tests.helpers.server import kill_workers, make_server
from tests.helpers.workers import events_of

pytest.importorskip("mlx_lm")

# Qwen2-0.5B's published config, but 2 of its 24 blocks and the demo's 739-token vocabulary
# (its tokenizer comes along): the widths that decide how the layers quantize are real.
QWEN2_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1e6,
             "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "num_hidden_layers": 2,
             "vocab_size": 739}
CONVERTING = ("loading", "quantizing", "saving")


def convert(server, model: str, body: dict, timeout: float = 180) -> dict:
    status, job = server.post(f"/api/models/{model}/convert", body)
    assert status == 201, job
    assert (job["backend"], job["method"]) == ("mlx", "convert")
    return server.wait_job(job["id"], timeout=timeout)


def registered(server, name: str) -> dict:
    entry = {m["id"]: m for m in server.get("/api/models")}[name]
    return describe_entry(ModelEntry(id=entry["id"], path=entry["path"],
                                     source=entry["source"]))


def phases(job: dict) -> list[str]:
    return [e.data["phase"] for e in events_of(Path(job["run_dir"])) if e.type == "status"]


def generates(folder: str) -> str:
    from mlx_lm import generate, load

    model, tokenizer = load(folder)
    return generate(model, tokenizer, "<|bos|><|user|>\nhi<|end|>\n", max_tokens=1)


@pytest.mark.slow
def test_the_demo_converts_to_4_bit_loads_generates_and_plans(live_server):
    job = convert(live_server, "tiny-demo", {"q_bits": 4, "q_group_size": 32,
                                             "name": "tiny-demo-q4"})
    assert job["status"] == "succeeded", job
    assert phases(job) == ["loading", "quantizing", "saving"]
    assert job["step"] == job["total_steps"] == 2 + 2  # loaded, 2 blocks, saved
    target = live_server.home / "models" / "tiny-demo-q4"
    assert job["summary"]["model_path"] == str(target)
    model = registered(live_server, "tiny-demo-q4")
    assert model["source"] == "converted" and model["path"] == str(target)
    assert model["format"] == "mlx" and model["quantization"] == {"bits": 4, "group_size": 32}
    assert model["size_bytes"] == job["summary"]["size_bytes"] > 0
    config = json.loads((target / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert isinstance(generates(str(target)), str)
    status, plan = live_server.post("/api/plan", {"backend": "mlx", "method": "kto",
                                                  "model": "tiny-demo-q4", "params": {}})
    assert status == 200, plan
    assert plan["model"]["quantization"] == {"bits": 4, "group_size": 32}, plan


@pytest.mark.slow
def test_unquantized_keeps_full_weights_in_the_dtype_asked(live_server):
    job = convert(live_server, "tiny-demo", {"q_bits": 0, "dtype": "float16"})
    assert job["status"] == "succeeded", job
    assert job["params"]["name"] == "tiny-demo-mlx" or job["params"]["name"].startswith(
        "tiny-demo-mlx-")
    assert phases(job) == ["loading", "saving"]
    model = registered(live_server, job["params"]["name"])
    assert model["format"] == "mlx" and model["quantization"] is None
    assert model["dtype"] == "float16"
    assert isinstance(generates(model["path"]), str)


def qwen_shaped(home: Path, name: str) -> Path:
    """A randomly initialised Qwen2 of QWEN2_05B's shape, saved with save_pretrained."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = home / "mine" / name
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B, torch_dtype="bfloat16"))
    model.to(torch.bfloat16).save_pretrained(folder)
    demo = home / "models" / "tiny-demo"
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja"):
        shutil.copy(demo / f, folder / f)
    return folder


@pytest.fixture(scope="module")
def qwen(live_server) -> str:
    folder = qwen_shaped(live_server.home, "qwen2-0.5b-shape")
    status, body = live_server.post("/api/models", {"path": str(folder),
                                                    "name": "qwen2-0.5b-shape"})
    assert status == 201, body
    assert body["format"] == "transformers" and body["architecture"] == "Qwen2ForCausalLM"
    return body["id"]


@pytest.mark.slow
def test_a_published_shape_converts_within_a_minute(live_server, qwen):
    t0 = time.monotonic()
    job = convert(live_server, qwen, {"q_bits": 4, "q_group_size": 128})
    assert job["status"] == "succeeded", job
    took = time.monotonic() - t0
    assert took < 60, took
    model = registered(live_server, job["params"]["name"])
    assert model["quantization"] == {"bits": 4, "group_size": 128}
    assert model["params"] == registered(live_server, qwen)["params"]
    assert model["size_bytes"] < registered(live_server, qwen)["size_bytes"] / 2.5
    assert isinstance(generates(model["path"]), str)
    print(f"Qwen2-0.5B-shaped, 2 blocks, {model['params']:,} parameters: converted to 4-bit "
          f"in {took:.1f} s (server to succeeded), {model['size_bytes']:,} bytes")


@pytest.mark.slow
def test_cancel_while_converting_removes_the_partial_folder(live_server, qwen):
    status, job = live_server.post(f"/api/models/{qwen}/convert",
                                   {"q_bits": 8, "name": "qwen-cancelled"})
    assert status == 201, job
    t0 = time.monotonic()
    # The worker's first phase, loading, comes before mlx is imported: some seconds to go.
    while (now := live_server.get(f"/api/jobs/{job['id']}"))["phase"] not in CONVERTING:
        assert now["status"] in ("queued", "starting", "running"), now
        assert time.monotonic() - t0 < 120, now
        time.sleep(0.05)
    status, _ = live_server.post(f"/api/jobs/{job['id']}/cancel")
    assert status == 200
    job = live_server.wait_job(job["id"], timeout=120)
    assert job["status"] == "cancelled", job
    assert not (live_server.home / "models" / "qwen-cancelled").exists()
    assert "qwen-cancelled" not in {m["id"] for m in live_server.get("/api/models")}
    again = convert(live_server, qwen, {"q_bits": 8, "name": "qwen-cancelled"})
    assert again["status"] == "succeeded", again  # the name is free again


def convert_config(run_dir: Path, model: Path, **params) -> None:
    from contract.job_config import write_config
    from contract.knobs import METHODS

    run_dir.mkdir(parents=True)
    write_config(run_dir, job_id=1, backend="mlx", method="convert", model=str(model),
                 dataset="", params=METHODS[("mlx", "convert")].validate(params),
                 resume_from_checkpoint=None)


@pytest.mark.slow
def test_the_worker_names_what_it_cannot_convert(demo, tmp_path):
    from tests.helpers.workers import run_mlx

    odd = tmp_path / "odd"
    shutil.copytree(demo["model"], odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    run_dir = tmp_path / "home" / "runs" / "000001"
    convert_config(run_dir, odd, name="odd-4bit")
    rc, events = run_mlx(run_dir)
    error = next(e.data for e in events if e.type == "error")
    assert rc == 1 and error["message"] == "Model type nosuchmodel not supported."
    assert "has no model of type 'nosuchmodel'" in error["hint"]
    assert not (tmp_path / "home" / "models" / "odd-4bit").exists()

    (tmp_path / "home" / "models" / "taken").mkdir(parents=True)
    run_dir = tmp_path / "home" / "runs" / "000002"
    convert_config(run_dir, demo["model"], name="taken")
    rc, events = run_mlx(run_dir)
    error = next(e.data for e in events if e.type == "error")
    assert rc == 1 and error["message"].endswith("models/taken exists already")
    assert "never writes over a model" in error["hint"]


@pytest.fixture(scope="module")
def cache_server(demo_home, tmp_path_factory):
    """A server whose Hugging Face cache holds a transformers and an MLX 4-bit repo."""
    home = tmp_path_factory.mktemp("convert-cache-home")
    shutil.copytree(demo_home, home, dirs_exist_ok=True)
    cache = make_cache(home / "hf-hub", demo_home / "models" / "tiny-demo")
    server = make_server(home, HF_HUB_CACHE=str(cache))
    server.start()
    server.cache = cache
    yield server
    kill_workers(server)
    server.stop()


@pytest.mark.slow
def test_a_cached_hub_id_converts_into_home_not_the_cache(cache_server):
    before = sorted(p.name for p in cache_server.cache.rglob("*"))
    job = convert(cache_server, "acme/tiny-chat", {"q_bits": 8})
    assert job["status"] == "succeeded", job
    assert job["model"] == "acme/tiny-chat" and job["params"]["name"] == "tiny-chat-8bit"
    model = registered(cache_server, "tiny-chat-8bit")
    assert model["path"] == str(cache_server.home / "models" / "tiny-chat-8bit")
    assert model["quantization"] == {"bits": 8, "group_size": 64}
    assert sorted(p.name for p in cache_server.cache.rglob("*")) == before
    status, body = cache_server.post("/api/models/mlx-community/tiny-chat-4bit/convert", {})
    assert status == 422 and "quantized already (4-bit)" in body["detail"][0]["msg"]
