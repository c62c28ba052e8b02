"""Prospect's overhead over bare TRL on the same KTO job, plus the server's own footprint.

Runs the job as a bare TRL script (bench/bare_trl.py), then through Prospect (a real
`prospect serve`, the job submitted over REST), one after the other on this machine, and
prints each one's training steps per second (TRL's own train_steps_per_second in both), the
server's start-up time to its first answered request and its peak resident memory while the
job trains. The last line is the ratio Prospect / bare (target >= 0.97).

    python bench/overhead.py                      # the offline demo model, CPU
    python bench/overhead.py --model DIR --dataset FILE --params '{"max_steps": 300}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Server, init_home  # noqa: E402

DEFAULT_PARAMS = {"max_steps": 200, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
                  "logging_steps": 10, "save_steps": 10_000, "max_length": 256}


def run_bare(model: str, dataset: str, params: dict) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_trl.py"), "--model", model,
                          "--dataset", dataset, "--params", json.dumps(params)],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"bare TRL run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_prospect(home: Path, model: str, dataset: str, params: dict) -> dict:
    with Server(home) as server:
        t1 = time.perf_counter()
        job = server.run_job({"name": "bench", "model": model, "dataset": dataset,
                              "params": params})
    summary = job["summary"]
    return {"train_steps_per_second": summary["steps_per_s"], "startup_s": server.startup_s,
            "server_rss_bytes": server.peak_rss, "wall_s": time.perf_counter() - t1,
            "train_runtime": summary["train_runtime_s"], "steps": summary["steps"],
            "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the offline demo model)")
    ap.add_argument("--dataset", help="KTO dataset file (default: the demo dataset)")
    ap.add_argument("--params", default=json.dumps(DEFAULT_PARAMS), help="job params as JSON")
    ap.add_argument("--repeat", type=int, default=1, help="alternate runs; medians reported")
    args = ap.parse_args()
    params = json.loads(args.params)

    with tempfile.TemporaryDirectory(prefix="prospect-bench-") as tmp:
        home = Path(tmp)
        demo = init_home(home)
        model, dataset = args.model or demo["model"], args.dataset or demo["dataset"]
        print(f"config: model={model} params={json.dumps(params)}", flush=True)
        bare, ours = [], []
        for i in range(args.repeat):
            bare.append(run_bare(model, dataset, params))
            print(f"run {i + 1}: bare TRL   {bare[-1]['train_steps_per_second']:.3f} steps/s "
                  f"({bare[-1]['steps']} steps in {bare[-1]['train_runtime']:.1f} s)", flush=True)
            ours.append(run_prospect(home, model, dataset, params))
            print(f"run {i + 1}: Prospect   {ours[-1]['train_steps_per_second']:.3f} steps/s "
                  f"({ours[-1]['steps']} steps in {ours[-1]['train_runtime']:.1f} s)", flush=True)

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    b, p = med(bare, "train_steps_per_second"), med(ours, "train_steps_per_second")
    print(f"bare TRL steps/s: {b:.3f}")
    print(f"Prospect steps/s: {p:.3f}")
    print(f"server start-up to first answered request: {med(ours, 'startup_s'):.2f} s "
          "(target < 1.5 s)")
    print(f"server resident memory with a job running: "
          f"{max(r['server_rss_bytes'] for r in ours) / 2**20:.0f} MB (target < 150 MB)")
    if "peak_cuda_bytes" in bare[0]:
        print(f"bare TRL peak CUDA memory: {bare[0]['peak_cuda_bytes'] / 2**30:.2f} GiB; "
              f"Prospect peak backend memory: "
              f"{(ours[0]['summary'].get('peak_backend_bytes') or 0) / 2**30:.2f} GiB")
    print(f"ratio Prospect/bare: {p / b:.3f}")


if __name__ == "__main__":
    main()
