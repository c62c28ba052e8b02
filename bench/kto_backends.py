"""The same KTO job on both backends: TRL on torch (CPU) and Prospect's MLX KTO (CPU).

Same tiny demo model, dataset, batch size, steps, sequence limit, learning rate and LoRA rank
on the same layers; both submitted to a real server. Prints samples/s of each and, last, the
ratio MLX/TRL.

    python bench/kto_backends.py [--steps 60] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, init_home  # noqa: E402


def samples_per_s(summary: dict, batch: int) -> float:
    return summary["steps"] * batch / summary["train_runtime_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    torch_params = {"max_steps": a.steps, "per_device_train_batch_size": a.batch_size,
                    "gradient_accumulation_steps": 1, "max_length": 256,
                    "learning_rate": 1e-5, "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                    "gradient_checkpointing": False, "logging_steps": 10,
                    "save_steps": 100_000, "device": "cpu", "dtype": "float32"}
    mlx_params = {"iters": a.steps, "batch_size": a.batch_size, "max_seq_length": 256,
                  "learning_rate": 1e-5, "rank": 8, "scale": 2.0, "dropout": 0.0,
                  "num_layers": 2, "steps_per_report": 10, "steps_per_save": 100_000}
    with tempfile.TemporaryDirectory(prefix="prospect-kto-bench-") as tmp:
        demo = init_home(Path(tmp))
        with Server(Path(tmp)) as server:
            common = {"model": demo["model"], "dataset": demo["dataset"]}
            trl = server.run_job({**common, "name": "trl", "backend": "torch",
                                  "method": "kto", "params": torch_params})
            mlx = server.run_job({**common, "name": "mlx", "backend": "mlx",
                                  "method": "kto", "params": mlx_params})
    t, m = samples_per_s(trl["summary"], a.batch_size), samples_per_s(mlx["summary"],
                                                                       a.batch_size)
    print(f"TRL (torch, CPU) samples/s: {t:.2f}  final loss {trl['summary']['final_loss']}")
    print(f"MLX (CPU) samples/s: {m:.2f}  final loss {mlx['summary']['final_loss']}")
    print(f"ratio MLX/TRL: {m / t:.3f}")


if __name__ == "__main__":
    main()
