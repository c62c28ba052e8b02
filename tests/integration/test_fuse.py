"""Fusing an adapter through the server: POST /api/adapters/{id}/fuse runs a fuse job (mlx-lm's
fuse, or PEFT's merge_and_unload), registers the fused model, and it serves as a base model."""

from __future__ import annotations

from pathlib import Path

import pytest

MLX_SFT = {"iters": 6, "batch_size": 4, "learning_rate": 1e-2, "steps_per_report": 3,
           "steps_per_eval": 100, "steps_per_save": 100, "val_batches": 1}
TORCH_KTO = {"max_steps": 3, "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0,
             "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
             "learning_rate": 5e-3, "device": "cpu", "gradient_checkpointing": False}
PROMPT = "<|bos|><|user|>\nWhat colour is grass?<|end|>\n<|assistant|>\n"


def submit(server, backend: str, method: str, params: dict, model: str = "tiny-demo") -> dict:
    status, job = server.post("/api/jobs", {"backend": backend, "method": method,
                                            "model": model, "dataset": "demo-kto",
                                            "params": params})
    assert status == 201, job
    return job


def fused(server, source: dict, body=None) -> tuple[dict, dict]:
    """Fuse ``source``'s adapter; return the finished fuse job and its registered model."""
    status, job = server.post(f"/api/adapters/{source['id']}/fuse", body)
    assert status == 201, job
    assert job["method"] == "fuse" and job["backend"] == source["backend"]
    assert job["model"] == source["model"] and job["params"]["adapter_path"] == \
        source["adapter_path"]
    job = server.wait_job(job["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert job["step"] == job["total_steps"]
    path = str(Path(job["run_dir"]) / "fused")
    assert job["summary"]["fused_model_path"] == path
    models = {m["id"]: m for m in server.get("/api/models")}
    name = job["params"]["name"]
    assert models[name]["path"] == path and models[name]["source"] == "fused"
    return job, models[name]


@pytest.fixture(scope="module")
def sources(live_server):
    """One MLX SFT and one torch KTO job, queued together, run one after the other."""
    jobs = {}
    if _has("mlx_lm"):
        jobs["mlx"] = submit(live_server, "mlx", "sft", MLX_SFT)
    jobs["torch"] = submit(live_server, "torch", "kto", TORCH_KTO)
    return jobs


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def finished(server, job: dict) -> dict:
    job = server.wait_job(job["id"], timeout=90)
    assert job["status"] == "succeeded", job
    return job


@pytest.mark.slow
def test_an_mlx_adapter_fuses_into_a_model_that_generates_the_same(live_server, sources):
    if "mlx" not in sources:
        pytest.skip("mlx-lm is not installed")
    from mlx_lm import generate, load

    source = finished(live_server, sources["mlx"])
    job, model = fused(live_server, source, {"name": "tiny-sft-fused"})
    assert job["params"]["name"] == "tiny-sft-fused"

    def greedy(model_dir, adapter=None) -> str:
        m, t = load(str(model_dir), adapter_path=adapter)
        return generate(m, t, PROMPT, max_tokens=12)

    assert greedy(model["path"]) == greedy(source["model_path"], source["adapter_path"])

    # The fused model is a base model now; its name is taken.
    new = submit(live_server, "mlx", "sft", {**MLX_SFT, "iters": 1}, model="tiny-sft-fused")
    assert new["model_path"] == model["path"]
    live_server.post(f"/api/jobs/{new['id']}/cancel")
    assert live_server.wait_job(new["id"], timeout=60)["status"] in ("cancelled", "succeeded")
    status, body = live_server.post(f"/api/adapters/{source['id']}/fuse",
                                    {"name": "tiny-sft-fused"})
    assert status == 409 and "already registered" in body["detail"][0]["msg"]


@pytest.mark.slow
def test_a_torch_adapter_merges_into_a_model_with_the_same_logits(live_server, sources):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = finished(live_server, sources["torch"])
    job, model = fused(live_server, source)  # no body: named <model>-<run name>
    assert model["id"] == f"tiny-demo-{source['name']}"

    tokenizer = AutoTokenizer.from_pretrained(model["path"])
    ids = tokenizer(PROMPT + "Green, mostly.", return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(model["path"]).eval()
    base = AutoModelForCausalLM.from_pretrained(source["model_path"]).eval()
    with torch.no_grad():
        plain = base(ids).logits
        peft = PeftModel.from_pretrained(base, source["adapter_path"]).eval()(ids).logits
        ours = merged(ids).logits
    assert (peft - plain).abs().max() > 1e-3  # the adapter does change the model
    assert (ours - peft).abs().max() < 1e-4

    status, body = live_server.post("/api/jobs", {"backend": "torch", "method": "kto",
                                                  "model": model["id"], "dataset": "demo-kto",
                                                  "params": TORCH_KTO})
    assert status == 201, body
    live_server.post(f"/api/jobs/{body['id']}/cancel")
    live_server.wait_job(body["id"], timeout=60)

    listed = {a["job_id"]: a for a in live_server.get("/api/adapters")}
    assert listed[source["id"]] == {
        "job_id": source["id"], "name": source["name"], "backend": "torch", "method": "kto",
        "model": "tiny-demo", "adapter_path": source["adapter_path"],
        "final_loss": source["summary"]["final_loss"]}
    assert job["id"] not in listed  # a fuse job has no adapter


def test_fusing_an_unknown_or_adapterless_job_is_refused(live_server, tmp_path):
    status, body = live_server.post("/api/adapters/999999/fuse")
    assert status == 404 and "does not exist" in body["detail"]

    # A fuse job given a folder with no adapter fails in its worker, with the reason...
    empty = live_server.home / "not-an-adapter"
    empty.mkdir(exist_ok=True)
    backend = "mlx" if _has("mlx_lm") else "torch"
    status, job = live_server.post("/api/jobs", {"backend": backend, "method": "fuse",
                                                 "model": "tiny-demo", "dataset": "",
                                                 "params": {"adapter_path": str(empty)}})
    assert status == 201, job
    job = live_server.wait_job(job["id"], timeout=60)
    assert job["status"] == "failed" and "adapter" in job["error"]
    # ...and a failed job has no adapter to fuse.
    status, body = live_server.post(f"/api/adapters/{job['id']}/fuse")
    assert status == 409 and "no adapter" in body["detail"]

    status, body = live_server.post("/api/jobs", {"backend": "mlx", "method": "sft",
                                                  "model": "tiny-demo", "dataset": "",
                                                  "params": {}})
    assert status == 422 and body["detail"][0]["field"] == "dataset"  # only fuse goes without


def test_a_fused_model_is_named_after_its_model_and_run(tmp_path):
    """Not "fused-3": the base model and the run, as a model id, unique."""
    from sqlmodel import Session, SQLModel

    from app.db import make_engine
    from app.jobs.service import fused_model_name
    from app.models import Job, JobStatus, ModelEntry

    engine = make_engine(tmp_path / "t.db")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        assert fused_model_name(s, "Qwen/Qwen2.5-0.5B-Instruct", "baseline lr 5e-7") == \
            "Qwen2.5-0.5B-Instruct-baseline-lr-5e-7"
        assert fused_model_name(s, "tiny-demo", "  ünï/côdé?! run ") == "tiny-demo-n-c-d-run"
        assert fused_model_name(s, "/models/tiny-demo/", "") == "tiny-demo"
        s.add(ModelEntry(id="tiny-demo-a", path="/x", source="fused"))
        s.add(Job(name="f", backend="torch", method="fuse", model="tiny-demo", dataset="",
                  status=JobStatus.running, params={"name": "tiny-demo-a-2"}))
        s.commit()
        assert fused_model_name(s, "tiny-demo", "a") == "tiny-demo-a-3"  # taken, and pending
