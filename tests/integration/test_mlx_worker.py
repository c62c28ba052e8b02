"""The MLX worker (LoRA SFT with mlx-lm, and KTO in MLX), run for real on the tiny demo model:
alone as the server starts it, and through a live server (create, cancel, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from contract.events import CONFIG_FILE, LOG_FILE  # noqa: E402
from contract.sft_rows import load_sft_rows, load_sft_splits  # noqa: E402
from tests.helpers.workers import (  # noqa: E402
    KTO_FAST,
    REPO,  # noqa: E402
    SFT_FAST,
    events_of,
    of_type,
)
from tests.helpers.workers import run_mlx as run  # noqa: E402
from tests.helpers.workers import write_mlx_config as write_config  # noqa: E402


def test_sft_data_shapes_and_kto_conversion(demo, tmp_path):
    rows, info = load_sft_rows(demo["dataset"])
    assert info["format"] == "kto" and info["kept"] == len(rows) < info["rows"]
    assert all(set(r) == {"messages"} and r["messages"][-1]["role"] == "assistant" for r in rows)
    train, valid, info = load_sft_splits(demo["dataset"], seed=3)
    assert len(valid) == round(len(rows) * 0.1) and len(train) + len(valid) == len(rows)
    assert load_sft_splits(demo["dataset"], seed=3)[:2] == (train, valid)  # reproducible
    assert load_sft_splits(demo["dataset"], seed=4)[1] != valid

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n"
                     + json.dumps({"prompt": [{"role": "user", "content": "c"}],
                                   "completion": [{"role": "assistant", "content": "d"}]}) + "\n")
    rows, info = load_sft_rows(mixed)  # conversational prompt/completion → chat messages
    assert info["format"] == "messages" and rows[1]["messages"][1]["content"] == "d"

    from contract.rows import DatasetError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hello"}) + "\n" + json.dumps({"messages": []}) + "\n")
    with pytest.raises(DatasetError) as err:
        load_sft_rows(bad)
    assert err.value.row == 2


def test_log_line_and_device_name_read_as_words():
    from workers.mlx.common import device_name, log_line

    assert device_name() in ("cpu", "gpu")
    line = log_line(10, 100, {"loss": 0.693147, "learning_rate": 1e-05, "note": "x"})
    assert line == "step 10/100: loss 0.693147, learning_rate 1e-05"


# --- the worker alone -----------------------------------------------------------------------
@pytest.mark.slow
def test_sft_job_events_checkpoints_and_an_adapter_mlx_lm_loads(tmp_path, demo):
    write_config(tmp_path, demo, "sft", SFT_FAST)
    rc, events = run(tmp_path)
    assert rc == 0, (tmp_path / LOG_FILE).read_text()[-3000:]
    phases = [s["phase"] for s in of_type(events, "status")]
    assert phases == ["preparing_data", "loading_model", "preparing_data", "training", "saving"]
    assert [p["step"] for p in of_type(events, "progress")] == list(range(1, 13))
    assert of_type(events, "progress")[-1]["eta_s"] == 0
    train = [m for m in of_type(events, "metric") if "loss" in m["values"]]
    assert [m["step"] for m in train] == [4, 8, 12]
    for m in train:
        assert {"loss", "learning_rate", "tokens_per_s", "peak_memory_gb"} <= set(m["values"])
    val = [m for m in of_type(events, "metric") if "val_loss" in m["values"]]
    assert [m["step"] for m in val] == [0, 6, 12]
    assert train[-1]["values"]["loss"] < val[0]["values"]["val_loss"]  # it learned something
    memory = of_type(events, "memory")
    assert memory and memory[-1]["backend"]["name"] == "mlx"
    assert [c["step"] for c in of_type(events, "checkpoint")] == [6, 12]
    checkpoint = tmp_path / "checkpoints" / "checkpoint-12"
    assert {p.name for p in checkpoint.iterdir()} == {
        "adapters.safetensors", "adapter_config.json", "optimizer.safetensors", "state.json"}
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 12
    adapter = tmp_path / "adapter"
    assert of_type(events, "artifact") == [{"kind": "adapter", "path": str(adapter)}]
    done = events[-1]
    assert done.type == "done" and done.data["status"] == "succeeded"
    assert done.data["summary"]["steps"] == 12 and done.data["summary"]["lora_layers"] == 2
    assert done.data["summary"]["device"] in ("cpu", "gpu")  # not "Device(cpu, 0)"
    # worker.log has a line at every report, as TRL prints one per logging step.
    log = (tmp_path / LOG_FILE).read_text()
    reports = [line for line in log.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in reports] == ["step 4/12", "step 8/12", "step 12/12"]
    assert all("loss " in line and "learning_rate " in line for line in reports), reports

    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(demo["model"]), adapter_path=str(adapter))
    lora_b = model.layers[0].self_attn.q_proj.lora_b
    assert mx.abs(lora_b).max().item() > 0  # trained weights came back


@pytest.mark.slow
def test_kto_job_reports_trl_metric_names(tmp_path, demo, mlx_kto_run):
    run_dir, rc, events = mlx_kto_run  # KTO_FAST: 8 steps, a checkpoint every 4
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    metrics = of_type(events, "metric")
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    for m in metrics:
        assert {"loss", "kl", "learning_rate", "tokens_per_s"} <= set(m["values"])
    names = set().union(*(m["values"] for m in metrics))
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
            "logps/rejected"} <= names
    assert [c["step"] for c in of_type(events, "checkpoint")] == [4, 8]
    assert events[-1].data["status"] == "succeeded"
    assert (run_dir / "adapter" / "adapters.safetensors").is_file()

    # Resumed from checkpoint-4 (adapter, Adam state, step), the run retraces the same steps.
    again = tmp_path / "resumed"
    write_config(again, demo, "kto", KTO_FAST,
                 resume_from_checkpoint=str(run_dir / "checkpoints" / "checkpoint-4"))
    rc, resumed = run(again)
    assert rc == 0, (again / LOG_FILE).read_text()[-3000:]
    assert [p["step"] for p in of_type(resumed, "progress")] == [5, 6, 7, 8]
    after = of_type(resumed, "metric")
    assert [m["step"] for m in after] == [6, 8]
    for ours, theirs in zip(after, metrics[2:], strict=True):
        for name, value in theirs["values"].items():
            if "/" in name or name in ("loss", "kl"):
                assert ours["values"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


@pytest.mark.slow
def test_a_bad_knob_fails_with_a_hint(tmp_path, demo):
    config = write_config(tmp_path, demo, "kto", KTO_FAST)
    raw = json.loads(config.read_text())
    raw["params"]["batch_size"] = 1
    config.write_text(json.dumps(raw))
    rc, events = run(tmp_path)
    assert rc == 1
    error = of_type(events, "error")[0]
    assert error["error_type"] == "invalid_params" and "batch_size" in error["hint"]
    assert events[-1].data["status"] == "failed"


# --- through the server ---------------------------------------------------------------------
def submit(server, method: str, params: dict, dataset: str = "demo-kto") -> dict:
    status, job = server.post("/api/jobs", {"name": f"mlx-{method}", "backend": "mlx",
                                            "method": method, "model": "tiny-demo",
                                            "dataset": dataset, "params": params})
    assert status == 201, job
    return job


@pytest.mark.slow
def test_mlx_sft_and_kto_jobs_through_the_server(live_server):
    sft = submit(live_server, "sft", SFT_FAST)
    kto = submit(live_server, "kto", KTO_FAST)
    sft, kto = live_server.wait_job(sft["id"], timeout=120), live_server.wait_job(kto["id"])
    for job in (sft, kto):
        assert job["status"] == "succeeded", job
        assert job["step"] == job["total_steps"] == job["params"]["iters"]
        assert job["adapter_path"] and Path(job["adapter_path"], "adapters.safetensors").is_file()
    m = live_server.get(f"/api/jobs/{sft['id']}/metrics?names=loss,val_loss")
    assert m["step"][-1] == 12 and m["loss"][-1] is not None and m["val_loss"][0] is not None
    m = live_server.get(f"/api/jobs/{kto['id']}/metrics?names=loss,kl,rewards/margins")
    assert m["step"] == [2, 4, 6, 8] and all(v is not None for v in m["loss"])

    status, body = live_server.post("/api/jobs", {"backend": "mlx", "method": "sft",
                                                  "model": "tiny-demo", "dataset": "demo-kto",
                                                  "params": {"rank": 0}})
    assert status == 422 and "rank" in json.dumps(body)


@pytest.mark.slow
def test_a_cancelled_mlx_job_resumes_where_it_stopped(live_server):
    params = {**SFT_FAST, "iters": 100, "batch_size": 2, "steps_per_report": 10,
              "steps_per_eval": 1000, "steps_per_save": 1000, "val_batches": 1}
    job = submit(live_server, "sft", params)
    live_server.wait_step(job["id"], 5, timeout=60)
    assert live_server.post(f"/api/jobs/{job['id']}/cancel")[0] == 200
    job = live_server.wait_job(job["id"])
    assert job["status"] == "cancelled", job
    stopped = int(Path(job["last_checkpoint"]).name.split("-")[1])
    assert 5 <= stopped < 100 and job["step"] == stopped

    status, body = live_server.post(f"/api/jobs/{job['id']}/resume")
    assert status == 200, body
    job = live_server.wait_job(job["id"])
    assert job["status"] == "succeeded" and job["step"] == job["total_steps"] == 100
    resumed = live_server.get(f"/api/jobs/{job['id']}/metrics?names=loss")
    assert resumed["step"] == sorted(set(resumed["step"])) and resumed["step"][-1] == 100

    # The same job never stopped: the loss of the intervals after the stop is the same.
    whole = submit(live_server, "sft", params)
    whole = live_server.wait_job(whole["id"])
    reference = live_server.get(f"/api/jobs/{whole['id']}/metrics?names=loss")
    after = [s for s in reference["step"] if s >= stopped + 10]
    assert after, (stopped, reference["step"])
    ours = dict(zip(resumed["step"], resumed["loss"], strict=True))
    theirs = dict(zip(reference["step"], reference["loss"], strict=True))
    for s in after:
        assert ours[s] == pytest.approx(theirs[s], rel=1e-5), s


# --- fuse -----------------------------------------------------------------------------------
def test_fused_model_generates_what_base_plus_adapter_does(tmp_path, demo):
    """An adapter with non-zero B (as after training), fused: the same greedy tokens."""
    import mlx.core as mx
    from mlx_lm import generate, load

    from contract.job_config import JobConfig
    from contract.method_args import MLXSFTArgs
    from workers.mlx.common import adapter_config, add_lora, save_adapter
    from workers.mlx.fuse import main as fuse_main

    job = JobConfig(job_id=1, model=str(demo["model"]), dataset=Path(demo["dataset"]),
                    run_dir=tmp_path, args=MLXSFTArgs.from_params({"rank": 4, "scale": 4.0}),
                    backend="mlx", method="sft")
    model, _ = load(job.model)
    num_layers = add_lora(model, job)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.5
    save_adapter(model, tmp_path / "adapter", adapter_config(job, num_layers))

    rc = fuse_main(["--model", job.model, "--adapter-path", str(tmp_path / "adapter"),
                    "--save-path", str(tmp_path / "fused"), "--run-dir", str(tmp_path)])
    assert rc == 0
    events = events_of(tmp_path)
    assert of_type(events, "artifact") == [{"kind": "fused_model",
                                            "path": str((tmp_path / "fused").resolve())}]
    assert events[-1].data["status"] == "succeeded"

    prompt = "<|bos|><|user|>\nWhat colour is grass?<|end|>\n<|assistant|>\n"

    def greedy(model_dir, adapter=None) -> str:
        m, t = load(str(model_dir), adapter_path=str(adapter) if adapter else None)
        return generate(m, t, prompt, max_tokens=12)

    with_adapter = greedy(demo["model"], tmp_path / "adapter")
    assert greedy(tmp_path / "fused") == with_adapter
    assert greedy(demo["model"]) != with_adapter  # the adapter does change the output

    assert fuse_main(["--model", job.model, "--adapter-path", str(tmp_path / "nowhere"),
                      "--save-path", str(tmp_path / "x"), "--run-dir", str(tmp_path)]) == 1
    assert of_type(events_of(tmp_path), "error")[-1]["error_type"] == "FileNotFoundError"


# --- data-parallel over processes -----------------------------------------------------------
def launch(run_dir: Path, processes: int = 2) -> int:
    """`mlx.launch -n N --backend ring` on loopback, as across Macs."""
    import subprocess
    import sys

    launcher = Path(sys.executable).with_name("mlx.launch")
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed")
    with open(run_dir / LOG_FILE, "ab") as log:
        return subprocess.run(
            [str(launcher), "-n", str(processes), "--backend", "ring", sys.executable, "-m",
             "workers.mlx", "--config", str(run_dir / CONFIG_FILE)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=180,
        ).returncode


@pytest.mark.slow
def test_sft_and_kto_data_parallel_over_two_local_processes(tmp_path, demo):
    """Each process takes half of every batch, gradients (and KTO's z0) are averaged, only
    rank 0 writes events, checkpoints and the adapter."""
    sft, kto = tmp_path / "sft", tmp_path / "kto"
    write_config(sft, demo, "sft", SFT_FAST)
    write_config(kto, demo, "kto", KTO_FAST)
    for run_dir, steps in ((sft, 12), (kto, 8)):
        assert launch(run_dir) == 0, (run_dir / LOG_FILE).read_text()[-3000:]
        events = events_of(run_dir)  # one file, one writer: seq strictly increasing
        assert [p["step"] for p in of_type(events, "progress")] == list(range(1, steps + 1))
        done = events[-1]
        assert done.data["status"] == "succeeded" and done.data["summary"]["processes"] == 2
        assert (run_dir / "adapter" / "adapters.safetensors").is_file()
        assert (run_dir / LOG_FILE).read_text().count("job 1: mlx") == 2  # both ranks ran

    metrics = [m["values"] for m in of_type(events_of(sft), "metric")]
    train = [v["loss"] for v in metrics if "loss" in v]
    assert len(train) == 3 and train[-1] < metrics[0]["val_loss"]
    names = set().union(*(m["values"] for m in of_type(events_of(kto), "metric")))
    assert {"loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen"} <= names


@pytest.mark.slow
def test_mask_prompt_on_text_rows_is_a_param_error(tmp_path, demo):
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(12)))
    write_config(tmp_path, demo, "sft", {**SFT_FAST, "mask_prompt": True}, dataset=str(data))
    rc, events = run(tmp_path)
    assert rc == 1
    error = of_type(events, "error")[0]
    assert error["error_type"] == "invalid_params" and error["field"] == "mask_prompt"
