"""Prospect's MLX LoRA SFT against bare `mlx_lm lora` on the same config, one after the other.

Both train the tiny demo model on the same train.jsonl / valid.jsonl (the demo KTO set's
desirable rows as chat messages). Throughput is the median of the tokens/s each reports per
`steps_per_report` interval, the first interval (warm-up) left out. The last line is the
ratio Prospect / bare (target >= 0.97).

    python bench/mlx_overhead.py [--iters 200] [--batch-size 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Server, init_home  # noqa: E402

sys.path.insert(0, str(ROOT))
from contract.rows import load_kto_dataset  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# mlx-lm's training table: "iter  train_loss [arrow]  tok/s  tokens" (validation rows differ)
TRAIN_ROW = re.compile(r"^\s*\d+\s+[0-9.]+\s+\S*\s+([\d,]+)\s+[0-9.]+k\s*$")


def write_sft_data(kto_file: str, out: Path) -> Path:
    rows = [r for r in load_kto_dataset(kto_file) if r["label"]]
    out.mkdir(parents=True, exist_ok=True)
    split = int(len(rows) * 0.9)
    for name, part in (("train", rows[:split]), ("valid", rows[split:])):
        with open(out / f"{name}.jsonl", "w") as f:
            for r in part:
                f.write(json.dumps({"messages": r["prompt"] + r["completion"]}) + "\n")
    return out


def bare(model: str, data: Path, cfg: dict, adapter: Path) -> list[float]:
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--model", model, "--train",
           "--data", str(data), "--iters", str(cfg["iters"]), "--batch-size",
           str(cfg["batch_size"]), "--num-layers", str(cfg["num_layers"]),
           "--learning-rate", str(cfg["learning_rate"]), "--steps-per-report",
           str(cfg["steps_per_report"]), "--steps-per-eval", str(cfg["steps_per_eval"]),
           "--val-batches", str(cfg["val_batches"]), "--max-seq-length",
           str(cfg["max_seq_length"]), "--save-every", str(cfg["steps_per_save"]),
           "--adapter-path", str(adapter), "--seed", str(cfg["seed"])]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"mlx_lm lora failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    rows = (TRAIN_ROW.match(ANSI.sub("", line)) for line in out.stdout.splitlines())
    return [float(m.group(1).replace(",", "")) for m in rows if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    cfg = {"iters": a.iters, "batch_size": a.batch_size, "num_layers": 2,
           "learning_rate": 1e-4, "steps_per_report": 10, "steps_per_eval": 100_000,
           "val_batches": 1, "max_seq_length": 256, "steps_per_save": 100_000, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="prospect-mlx-bench-") as tmp:
        home = Path(tmp) / "home"
        demo = init_home(home)
        data = write_sft_data(demo["dataset"], home / "datasets" / "sft")
        print(f"config: {json.dumps(cfg)}", flush=True)
        bare_tps, ours_tps = [], []
        for i in range(a.repeat):
            b = bare(demo["model"], data, cfg, Path(tmp) / f"bare-{i}")
            bare_tps.append(statistics.median(b[1:] or b))
            print(f"run {i + 1}: mlx_lm lora  {bare_tps[-1]:.1f} tokens/s", flush=True)
            with Server(home) as server:
                job = server.run_job({"name": "mlx-bench", "backend": "mlx", "method": "sft",
                                      "model": demo["model"],
                                      "dataset": str(data / "train.jsonl"), "params": cfg})
                tps = [v for v in server.metrics(job["id"], "tokens_per_s")["tokens_per_s"]
                       if v is not None]
            ours_tps.append(statistics.median(tps[1:] or tps))
            print(f"run {i + 1}: Prospect     {ours_tps[-1]:.1f} tokens/s", flush=True)
    b, p = statistics.median(bare_tps), statistics.median(ours_tps)
    print(f"mlx_lm lora tokens/s: {b:.1f}")
    print(f"Prospect MLX SFT tokens/s: {p:.1f}")
    print(f"ratio Prospect/bare: {p / b:.3f}")


if __name__ == "__main__":
    main()
