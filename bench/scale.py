"""One KTO job on 1 GPU and on 2 GPUs through Prospect, against bare `accelerate launch` + TRL
on the same config in the same run (issue 16).

The job: a Qwen2-0.5B-shaped model (randomly initialised: speed depends on the shape, not the
weights), bf16, LoRA r16 on all linear layers, 512-token rows, per-device batch 32, no
gradient checkpointing, accumulation 1, --steps optimizer steps. Runs, each a real job of a
real `prospect serve` (or the bare script):

    prospect 1 GPU × 32          prospect 2 GPUs × 32         prospect 2 GPUs × 16
    bare TRL 1 GPU × 32          bare accelerate 2 GPUs × 32

samples/s = optimizer steps × global batch / TRL's train_runtime (the same clock for Prospect
and bare), and a steady-state rate from Prospect's progress events (steps 5..N, the first
steps' CUDA warm-up left out) for the scaling ratio. The loss curve of 2 GPUs × 16 is
compared with 1 GPU × 32 (the same global batch of 32 and seed). The last lines print
"Prospect 2 GPUs / bare accelerate 2 GPUs" and, last, "2 GPUs / 1 GPU".

    python bench/scale.py                  # on a machine with 2 CUDA GPUs
    python bench/scale.py --steps 20 --out $OUT/scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autotune import rows_for  # noqa: E402
from common import ROOT, Server  # noqa: E402

KNOBS = {"max_length": 512, "r": 16, "lora_alpha": 32, "target_modules": ["all-linear"],
         "device": "cuda", "gradient_checkpointing": False, "gradient_accumulation_steps": 1,
         "logging_steps": 1, "save_steps": 100000, "seed": 42, "learning_rate": 5e-6}


def prospect(server: Server, model: str, dataset: str, gpus: int, batch: int,
             steps: int) -> dict:
    params = {**KNOBS, "per_device_train_batch_size": batch, "max_steps": steps,
              "num_processes": gpus, "tune": "off"}
    job = server.run_job({"name": f"scale-{gpus}x{batch}", "model": model, "dataset": dataset,
                          "params": params})
    s = job["summary"]
    global_batch = batch * gpus
    progress = [(e["step"], e["t"]) for e in events(Path(job["run_dir"]), "progress")]
    steady = [(st, t) for st, t in progress if st >= 5]
    rate = None
    if len(steady) >= 2:
        (s0, t0), (s1, t1) = steady[0], steady[-1]
        rate = (s1 - s0) * global_batch / (t1 - t0)
    loss = server.metrics(job["id"], "loss")
    return {"run": f"prospect {gpus}x{batch}", "samples_per_s": steps * global_batch /
            s["train_runtime_s"], "steady_samples_per_s": rate,
            "peak_bytes": s.get("peak_backend_bytes"), "loss": dict(zip(loss["step"],
                                                                      loss["loss"],
                                                                      strict=False)),
            "memory_ranks": last_ranks(Path(job["run_dir"]))}


def events(run_dir: Path, kind: str) -> list[dict]:
    out = []
    for raw in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(raw)
        if event.get("type") == kind:
            out.append(event)
    return out


def last_ranks(run_dir: Path) -> list | None:
    memory = events(run_dir, "memory")
    return (memory[-1].get("backend") or {}).get("ranks") if memory else None


def bare(model: str, dataset: str, gpus: int, batch: int, steps: int) -> dict:
    params = json.dumps({**KNOBS, "per_device_train_batch_size": batch, "max_steps": steps})
    script = [str(ROOT / "bench" / "bare_trl.py"), "--model", model, "--dataset", dataset,
              "--params", params]
    if gpus == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(gpus), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", *script]
    # One process with two GPUs visible would be nn.DataParallel, which KTOTrainer refuses.
    visible = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **visible})
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"bare run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    m = json.loads(lines[-1])
    return {"run": f"bare {gpus}x{batch}", "samples_per_s": m["steps"] * batch * gpus /
            m["train_runtime"], "peak_bytes": m.get("peak_cuda_bytes")}


def compare_curves(a: dict[int, float], b: dict[int, float]) -> str:
    steps = sorted(set(a) & set(b))
    if not steps:
        return "no common steps"
    diffs = [abs(a[s] - b[s]) for s in steps]
    # noise: how much the 1-GPU curve itself moves from step to step
    noise = [abs(a[s] - a[t]) for s, t in zip(steps, steps[1:], strict=False)]
    mean_noise = sum(noise) / len(noise) if noise else float("nan")
    return (f"{len(steps)} steps: max |Δloss| {max(diffs):.4f}, mean {sum(diffs)/len(diffs):.4f}"
            f" (the 1-GPU curve's own step-to-step change: mean {mean_noise:.4f}); "
            f"final {a[steps[-1]]:.4f} vs {b[steps[-1]]:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="append each result as a JSON line")
    ap.add_argument("--skip-bare", action="store_true")
    ap.add_argument("--gpus", type=int, default=2, choices=(1, 2),
                    help="1: only the one-GPU runs (a machine of one GPU: Prospect vs bare)")
    args = ap.parse_args()
    import synthetic  # torch and transformers load here

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "app.cli", "init"], cwd=ROOT, check=True,
                       env={**os.environ, "PROSPECT_HOME": str(root / "home")},
                       stdout=subprocess.DEVNULL)
        # inside the server's home: Prospect reads no folder outside it
        made = root / "home" / "synthetic"
        synthetic.build(made, "qwen2-0.5b", 256, 500)
        model = str(made / "model")
        dataset = rows_for(str(made / "kto.jsonl"), 64 * args.steps, made / "rows.jsonl")
        results = []

        def record(r: dict) -> dict:
            results.append(r)
            shown = {k: v for k, v in r.items() if k not in ("loss",)}
            print(json.dumps(shown), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
            return r

        with Server(root / "home") as server:
            # Warm-up, not recorded: the first run on a machine compiles TRL's fused LM-head
            # Triton kernels into the cache the later runs (the bare ones too) reuse; on
            # one H200 that cost the first run 0.765× the bare run's rate, steady rates equal.
            prospect(server, model, dataset, args.gpus, 16, 3)
            one = record(prospect(server, model, dataset, 1, 32, args.steps))
            if args.gpus == 2:
                two = record(prospect(server, model, dataset, 2, 32, args.steps))
                half = record(prospect(server, model, dataset, 2, 16, args.steps))
        if not args.skip_bare:
            bare1 = record(bare(model, dataset, 1, 32, args.steps))
        if args.gpus == 1:
            if not args.skip_bare:
                print(f"Prospect 1 GPU / bare 1 GPU = "
                      f"{one['samples_per_s'] / bare1['samples_per_s']:.3f}")
            return
        if not args.skip_bare:
            bare2 = record(bare(model, dataset, 2, 32, args.steps))
        print("loss, 2 GPUs × 16 against 1 GPU × 32 (global batch 32, seed 42): "
              + compare_curves(one["loss"], half["loss"]))
        for r in results:
            gib = (r.get("peak_bytes") or 0) / 2**30
            steady = r.get("steady_samples_per_s")
            print(f"{r['run']:<22} {r['samples_per_s']:8.2f} samples/s"
                  f"{f'  (steady {steady:.2f})' if steady else ''}  peak {gib:.1f} GiB")
        if not args.skip_bare:
            print(f"bare: 2 GPUs / 1 GPU = {bare2['samples_per_s'] / bare1['samples_per_s']:.3f}"
                  f"×;  Prospect 1 GPU / bare 1 GPU = "
                  f"{one['samples_per_s'] / bare1['samples_per_s']:.3f}")
            print(f"Prospect 2 GPUs / bare accelerate 2 GPUs = "
                  f"{two['samples_per_s'] / bare2['samples_per_s']:.3f} (target ≥ 0.97)")
        steady = (two["steady_samples_per_s"] or 0) / (one["steady_samples_per_s"] or 1)
        print(f"2 GPUs / 1 GPU = {two['samples_per_s'] / one['samples_per_s']:.3f}× over "
              f"train_runtime, {steady:.3f}× steady (target ≥ 1.85×)")


if __name__ == "__main__":
    main()
