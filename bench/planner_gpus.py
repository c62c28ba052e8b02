"""Calibration of the planner per GPU (app/planner/scale.py): a KTO job on 1 GPU, then on 2
GPUs under ddp and fsdp, each GPU's measured peak against the per-GPU estimate.

    python bench/planner_gpus.py [--work DIR] [--out FILE] [--only a,b]   # 2 CUDA GPUs

Each configuration runs the real worker: one process (``python -m workers.torch``), or the
server's own launch path for several (``python -m workers.launch`` over a launch.json, as
the supervisor starts it: accelerate launch, one process a GPU). The peak of each rank is
``torch.cuda.max_memory_allocated`` from rank 0's last memory event (``backend.ranks``,
gathered at step ends), compared with the estimate less its fixed overhead (the allocator's
count has no CUDA context and no cache slack), as bench/planner.py does for one GPU.
Models are random of published shapes (bench/synthetic.py), rows longer than max_length.
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

from planner import ROWS, build_assets  # noqa: E402

from app.hub.inspect import inspect_model  # noqa: E402
from contract.job_config import write_config  # noqa: E402
from contract.launch_env import worker_env  # noqa: E402
from contract.launch_plan import LaunchPlan, write_launch_plan  # noqa: E402

GiB = 2**30
C = dict(gradient_accumulation_steps=1, max_steps=4, logging_steps=1, save_steps=1000,
         device="cuda", warmup_ratio=0.0, per_device_train_batch_size=8, max_length=512)
CONFIGS = [  # (name, shape, params, processes, distributed)
    ("q05-1gpu", "qwen2-0.5b", C, 1, "ddp"),
    ("q05-ddp2", "qwen2-0.5b", C, 2, "ddp"),
    ("q05-fsdp2", "qwen2-0.5b", C, 2, "fsdp"),
    ("q15-1gpu", "qwen2-1.5b", dict(C, max_length=1024), 1, "ddp"),
    ("q15-ddp2", "qwen2-1.5b", dict(C, max_length=1024), 2, "ddp"),
    ("q15-fsdp2", "qwen2-1.5b", dict(C, max_length=1024), 2, "fsdp"),
]


def run_job(work: Path, name: str, assets: dict, params: dict, n: int, sharding: str,
            timeout: int) -> dict:
    run_dir = work / "runs" / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    full = dict(params, num_processes=n, distributed=sharding) if n > 1 else dict(params)
    config = write_config(run_dir, job_id=1, backend="torch", method="kto",
                          model=assets["model"], dataset=assets["dataset"], params=full,
                          resume_from_checkpoint=None)
    module = "workers.torch"
    if n > 1:
        write_launch_plan(run_dir, LaunchPlan(launcher="accelerate", processes=n,
                                              gpu_ids=list(range(n)),
                                              fsdp=sharding == "fsdp"))
        module = "workers.launch"
    env = {**worker_env(os.environ, "torch"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.time()
    with open(run_dir / "worker.log", "wb") as log:
        proc = subprocess.run([sys.executable, "-m", module, "--config", str(config)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    peaks: dict[int, int] = {}
    status = None
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["type"] == "memory":
            b = ev.get("backend") or {}
            peaks[0] = max(peaks.get(0, 0), b.get("peak_bytes") or 0)
            for r in b.get("ranks") or []:
                peaks[r["rank"]] = max(peaks.get(r["rank"], 0), r.get("peak_bytes") or 0)
        elif ev["type"] == "done":
            status = ev["status"]
    if status != "succeeded":
        tail = (run_dir / "worker.log").read_text()[-2500:]
        raise SystemExit(f"{name}: the job ended {status} (exit {proc.returncode}):\n{tail}")
    return {"peaks": {str(k): v for k, v in sorted(peaks.items())},
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/prospect-planner-gpus"))
    ap.add_argument("--out", type=Path, default=None, help="the results as JSON")
    ap.add_argument("--only", default="")
    ap.add_argument("--timeout", type=int, default=240)
    a = ap.parse_args()
    from app.planner.estimate import estimate

    a.work.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, a.only.split(",")))
    results = {}
    print(f"{'configuration':12} {'estimate/GPU':>12} {'measured max':>12} {'error':>7}  "
          "ranks", flush=True)
    for name, shape, params, n, sharding in CONFIGS:
        if wanted and name not in wanted:
            continue
        assets = build_assets(a.work, shape, rows=ROWS, tokens=1100)
        try:
            got = run_job(a.work, name, assets, params, n, sharding, a.timeout)
        except (SystemExit, subprocess.TimeoutExpired) as exc:
            print(f"FAILED {name}: {exc}", flush=True)
            results[name] = {"failed": str(exc)[-2500:]}
            continue
        facts = inspect_model(assets["model"])
        full = dict(params, per_device_train_batch_size=min(params[
            "per_device_train_batch_size"], ROWS), num_processes=n, distributed=sharding)
        est = estimate(facts, "torch", "kto", full, device="cuda")
        guess = est["allocated_bytes"]
        measured = max(got["peaks"].values())
        got.update(estimate_allocated=int(guess), error=round(guess / measured - 1, 3),
                   breakdown=est["breakdown"])
        results[name] = got
        ranks = " ".join(f"{r}:{v / GiB:.2f}" for r, v in got["peaks"].items())
        print(f"{name:12} {guess / GiB:12.2f} {measured / GiB:12.2f} "
              f"{guess / measured - 1:+7.0%}  {ranks} GiB ({got['seconds']} s)", flush=True)
        if a.out:
            a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
