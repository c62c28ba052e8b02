"""Calibration of the memory planner: its estimate against the peak a real job measured.

    python bench/planner.py [--work DIR] [--only a,b] [--estimate-only] [--cuda]

Each configuration runs the real worker (``python -m workers.torch|mlx``) on a real model
folder (the tiny demo shape, or a randomly initialised model of a published shape, built
offline by bench/synthetic.py) with rows longer than the sequence limit, so every batch is
full length: the planner estimates that worst case. The peak comes from the job's own
``memory`` events (workers/memory.py), sampled every 50 ms: the process RSS on the CPU
(weights, activations and the framework itself), the allocator's peak on CUDA
(``torch.cuda.max_memory_allocated``; the CUDA context is outside it, so the estimate is
compared without its fixed overhead).

Measurements are kept in <work>/results[-cuda].json; ``--estimate-only`` re-prints the pairs
from them with the current planner (what calibrating the constants needs). The worst relative
error is the last line. Target: within ±20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from app.hub.inspect import inspect_model  # noqa: E402
from contract.job_config import write_config  # noqa: E402
from contract.launch_env import worker_env  # noqa: E402

GB = 1e9
ROWS = 16  # rows of the synthetic dataset, each longer than any max length here
SHAPES = {  # added to bench/synthetic.py's shapes: a mid-size Llama with a 32k vocabulary
    "mid-1b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=1536,
                   intermediate_size=4096, num_hidden_layers=8, num_attention_heads=12,
                   num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096,
                   rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "qwen2-1.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                       hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                       max_position_embeddings=32768, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True),
}

T = dict(gradient_accumulation_steps=1, max_steps=2, logging_steps=1, save_steps=1000,
         device="cpu", warmup_ratio=0.0)
M = dict(iters=2, steps_per_report=1, steps_per_save=1000)
CPU = [  # (name, backend, method, shape, params)
    ("torch-tiny-b2-s128", "torch", "kto", "tiny",
     dict(T, per_device_train_batch_size=2, max_length=128)),
    ("torch-q05-b2-s256-ckpt", "torch", "kto", "qwen2-0.5b",
     dict(T, per_device_train_batch_size=2, max_length=256)),
    ("torch-q05-b4-s256-nockpt", "torch", "kto", "qwen2-0.5b",
     dict(T, per_device_train_batch_size=4, max_length=256, gradient_checkpointing=False)),
    ("torch-q05-b2-s256-ckpt-precompute", "torch", "kto", "qwen2-0.5b",
     dict(T, per_device_train_batch_size=2, max_length=256, precompute_ref_log_probs=True)),
    ("torch-mid-b4-s256-nockpt", "torch", "kto", "mid-1b",
     dict(T, per_device_train_batch_size=4, max_length=256, gradient_checkpointing=False)),
    ("mlx-tiny-sft-b4-s128", "mlx", "sft", "tiny", dict(M, batch_size=4, max_seq_length=128,
                                                          val_batches=1)),
    ("mlx-q05-sft-b2-s128", "mlx", "sft", "qwen2-0.5b",
     dict(M, batch_size=2, max_seq_length=128, val_batches=1)),
    ("mlx-tiny-kto-b4-s128", "mlx", "kto", "tiny", dict(M, batch_size=4, max_seq_length=128)),
    ("mlx-q05-kto-b2-s128", "mlx", "kto", "qwen2-0.5b", dict(M, iters=1, batch_size=2,
                                                               max_seq_length=128)),
]
C = dict(T, device="cuda", max_steps=3)
CUDA = [
    ("cuda-q05-b8-s512-ckpt", "torch", "kto", "qwen2-0.5b",
     dict(C, per_device_train_batch_size=8, max_length=512)),
    ("cuda-q05-b32-s512-nockpt", "torch", "kto", "qwen2-0.5b",
     dict(C, per_device_train_batch_size=32, max_length=512, gradient_checkpointing=False)),
    ("cuda-q05-b16-s1024-nockpt-pre", "torch", "kto", "qwen2-0.5b",
     dict(C, per_device_train_batch_size=16, max_length=1024, gradient_checkpointing=False,
          precompute_ref_log_probs=True)),
    ("cuda-q15-b8-s1024-ckpt", "torch", "kto", "qwen2-1.5b",
     dict(C, per_device_train_batch_size=8, max_length=1024)),
    ("cuda-mid-b16-s1024-nockpt-fp32", "torch", "kto", "mid-1b",
     dict(C, per_device_train_batch_size=16, max_length=1024, gradient_checkpointing=False,
          dtype="float32")),
]


def build_assets(work: Path, shape: str, rows: int, tokens: int) -> dict[str, str]:
    """A model folder of ``shape`` and KTO rows of about ``tokens`` tokens, built once."""
    import synthetic

    synthetic.SHAPES.update(SHAPES)
    data = work / "data"
    if not (data / "kto.jsonl").is_file():
        synthetic.build(data, "qwen2-0.5b" if shape == "tiny" else shape, rows, tokens)
    if shape == "qwen2-0.5b":  # synthetic.build made this shape beside the rows
        return {"model": str(data / "model"), "dataset": str(data / "kto.jsonl")}
    folder = work / shape
    if shape == "tiny":
        from workers.tools.demo_assets import build_model

        if not (folder / "config.json").is_file():
            build_model(folder)
        return {"model": str(folder), "dataset": str(data / "kto.jsonl")}
    if not (folder / "model" / "config.json").is_file():
        synthetic.build(folder, shape, 2, 16)
    return {"model": str(folder / "model"), "dataset": str(data / "kto.jsonl")}


def run_worker(work: Path, name: str, backend: str, method: str, assets: dict,
               params: dict, timeout: int) -> dict:
    run_dir = work / "runs" / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config = write_config(run_dir, job_id=1, backend=backend, method=method,
                          model=assets["model"], dataset=assets["dataset"], params=params,
                          resume_from_checkpoint=None)
    env = {**worker_env(os.environ, backend), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # ^ as the supervisor starts a worker (contract/launch_env.py)
    t0 = time.time()
    with open(run_dir / "worker.log", "wb") as log:
        proc = subprocess.run([sys.executable, "-m", f"workers.{backend}", "--config",
                               str(config), "--memory-interval", "0.05"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    rss, backend_peak, status = 0, 0, None
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["type"] == "memory":
            rss = max(rss, ev.get("rss_bytes") or 0)
            b = ev.get("backend") or {}
            backend_peak = max(backend_peak, b.get("peak_bytes") or 0, b.get("active_bytes") or 0)
        elif ev["type"] == "done":
            status = ev["status"]
    if status != "succeeded":
        tail = (run_dir / "worker.log").read_text()[-1500:]
        raise SystemExit(f"{name}: the job ended {status} (exit {proc.returncode}):\n{tail}")
    return {"rss_bytes": rss, "backend_peak_bytes": backend_peak,
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/prospect-planner-bench"))
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    ap.add_argument("--estimate-only", action="store_true",
                    help="re-print the pairs from the saved measurements")
    ap.add_argument("--cuda", action="store_true", help="the CUDA configurations")
    ap.add_argument("--fresh", action="store_true", help="measure again")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds a run may take")
    a = ap.parse_args()
    configs = CUDA if a.cuda else CPU
    if a.only:
        wanted = set(a.only.split(","))
        configs = [c for c in configs if c[0] in wanted]
    a.work.mkdir(parents=True, exist_ok=True)
    results_path = a.work / ("results-cuda.json" if a.cuda else "results.json")
    results = json.loads(results_path.read_text()) \
        if results_path.is_file() and not a.fresh else {}
    for name, backend, method, shape, params in configs:  # measure what is not saved yet
        assets = build_assets(a.work, shape, rows=ROWS, tokens=1100)
        if name not in results and not a.estimate_only:
            try:
                results[name] = run_worker(a.work, name, backend, method, assets, params,
                                           a.timeout)
            except (SystemExit, subprocess.TimeoutExpired) as exc:  # report, go on
                print(f"FAILED {name}: {exc}", flush=True)
                continue
            results_path.write_text(json.dumps(results, indent=1))
            print(f"measured {name}: {results[name]}", flush=True)
    from app.planner.estimate import estimate

    worst = 0.0
    print(f"{'configuration':34} {'estimate GB':>11} {'measured GB':>11} {'error':>7}")
    for name, backend, method, shape, params in configs:
        if name not in results:
            continue
        assets = build_assets(a.work, shape, rows=ROWS, tokens=1100)
        facts = inspect_model(assets["model"])
        device = params.get("device", "cpu") if backend == "torch" else "cpu"
        # A batch larger than the 16 rows runs as 16 (the dataloader has no more): plan that.
        key = "per_device_train_batch_size" if backend == "torch" else "batch_size"
        ran = dict(params, **{key: min(params.get(key, 2), ROWS)})
        est = estimate(facts, backend, method, ran, device=device)
        if device == "cuda":  # the allocator's peak: no context, no cache slack
            guess, measured = est["allocated_bytes"], results[name]["backend_peak_bytes"]
        else:
            guess, measured = est["total_bytes"], results[name]["rss_bytes"]
        err = guess / measured - 1
        worst = max(worst, abs(err))
        extra = ""
        if backend == "mlx" and results[name]["backend_peak_bytes"] > 0.1 * GB:
            # What a Mac's Metal limit sees: MLX's own peak against the estimate less overhead.
            mlx_err = est["allocated_bytes"] / results[name]["backend_peak_bytes"] - 1
            extra = f"   (MLX allocator peak {results[name]['backend_peak_bytes'] / GB:.3f} GB," \
                    f" estimate {est['allocated_bytes'] / GB:.3f} GB, {mlx_err:+.1%})"
        print(f"{name:34} {guess / GB:11.3f} {measured / GB:11.3f} {err:+7.1%}{extra}",
              flush=True)
    print(f"worst relative error: {worst:.1%} (target ±20%)")


if __name__ == "__main__":
    main()
