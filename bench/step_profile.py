"""Where a step of Prospect's torch KTO job spends its time beyond the model, against bare TRL.

The same tiny job both ways (the demo model and rows, batch 4, 64 tokens, LoRA r8, 200 steps,
CPU): Prospect's torch worker as the server starts it (``python -m workers.torch --config``,
its events file, memory sampler and callback), and bench/bare_trl.py (KTOTrainer alone).
First ``--repeat`` alternating timed runs of each (TRL's own train_steps_per_second, no
profiler), then one run of each under cProfile timed by CPU time (``time.process_time``: on
a shared machine a wall clock measures the neighbours): the CPU time per step inside the
model's step (``Trainer.training_step``), the trainer's callbacks, Prospect's own code (the
callback, event writing) and the whole loop. Both run with OMP_NUM_THREADS=1 (torch's CPU
threads spin when their cores are taken, which a CPU clock would count as work).

    python bench/step_profile.py [--steps 200] [--repeat 1] [--top 12]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.job_config import write_config  # noqa: E402
from contract.knobs import TORCH_KTO  # noqa: E402

PARAMS = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
          "max_length": 64, "r": 8, "lora_alpha": 16, "learning_rate": 1e-4,
          "logging_steps": 10, "save_steps": 100_000, "gradient_checkpointing": False}

# (label, how a profile entry is picked: file suffix, function name)
PARTS = [
    ("model step (Trainer.training_step)", "transformers/trainer.py", "training_step"),
    ("optimizer step", "torch/optim/optimizer.py", "wrapper"),
    ("batch loading (next batch)", "transformers/trainer.py", "get_batch_samples"),
    ("all callbacks (CallbackHandler.call_event)", "transformers/trainer_callback.py",
     "call_event"),
    ("Prospect callback: on_step_end", "workers/torch/callback.py", "on_step_end"),
    ("Prospect callback: on_log", "workers/torch/callback.py", "on_log"),
    ("Prospect events: EventWriter.emit", "contract/events.py", "emit"),
    ("training loop total (_inner_training_loop)", "transformers/trainer.py",
     "_inner_training_loop"),
]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def profiled(profile: Path | None) -> list[str]:
    """The command prefix that runs a target under this file's CPU-time profiler."""
    return [__file__, "--profile-to", str(profile)] if profile else []


def profile_child(out: Path, target: list[str]) -> None:
    """Run ``target`` (``-m module args`` or ``script args``) in this process under cProfile
    with a CPU clock; write the stats to ``out``."""
    prof = cProfile.Profile(time.process_time)
    sys.argv = target[1:] if target[0] == "-m" else target
    prof.enable()
    try:
        if target[0] == "-m":
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        prof.disable()
        prof.dump_stats(str(out))


def run_ours(demo: dict, params: dict, run_dir: Path, profile: Path | None) -> float:
    run_dir.mkdir(parents=True)
    config = write_config(run_dir, job_id=1, backend="torch", method="kto",
                          model=str(demo["model"]), dataset=str(demo["dataset"]),
                          params=TORCH_KTO.validate(params), resume_from_checkpoint=None)
    subprocess.run([sys.executable, *profiled(profile), "-m", "workers.torch", "--config",
                    str(config)], cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "done":
            if event["status"] != "succeeded":
                raise SystemExit(f"the worker's job {event['status']}: see {run_dir}")
            return event["summary"]["steps_per_s"]
    raise SystemExit(f"the worker wrote no done event: see {run_dir}/worker.log")


def run_bare(demo: dict, params: dict, profile: Path | None) -> float:
    out = subprocess.run([sys.executable, *profiled(profile), str(ROOT / "bench" / "bare_trl.py"),
                          "--model", str(demo["model"]), "--dataset", str(demo["dataset"]),
                          "--params", json.dumps(params)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"bare TRL run failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{"))
    return json.loads(line)["train_steps_per_second"]


def breakdown(profile: Path, steps: int, top: int, label: str) -> dict[str, float]:
    """ms per step of each part (cumulative time, main thread), then our top functions."""
    stats = pstats.Stats(str(profile))
    per_step = {}
    for name, suffix, func in PARTS:
        cum = sum(v[3] for (file, _, fn), v in stats.stats.items()  # type: ignore[attr-defined]
                  if file.endswith(suffix) and fn == func)
        per_step[name] = cum / steps * 1e3
    print(f"\n{label}: CPU ms per step (cProfile, its own overhead included)")
    for name, ms in per_step.items():
        print(f"  {name:<48}{ms:>8.3f}")
    ours = [(v[3], f"{Path(file).relative_to(ROOT)}:{line} {fn}", v[1])
            for (file, line, fn), v in stats.stats.items()  # type: ignore[attr-defined]
            if file.startswith(str(ROOT)) and "/.venv/" not in file and "/bench/" not in file
            and v[1] >= steps]  # called every step
    if ours:
        print(f"  Prospect's own per-step functions by cumulative time (top {top}):")
        for cum, where, calls in sorted(ours, reverse=True)[:top]:
            print(f"    {cum / steps * 1e3:>8.3f} ms/step  {calls:>7} calls  {where}")
    return per_step


def callback_alone(n: int = 5000) -> float:
    """µs per ``EventCallback.on_step_end`` (its progress event written to a real file),
    without a profiler: what Prospect adds to every step."""
    from types import SimpleNamespace

    from contract.events import EventWriter
    from workers.torch.callback import EventCallback

    with tempfile.TemporaryDirectory() as tmp:
        events = EventWriter(Path(tmp) / "events.jsonl")
        callback = EventCallback(events, stop_requested=lambda: False, token_count=lambda: 0)
        state = SimpleNamespace(global_step=0, max_steps=n, epoch=0.0)
        callback.on_train_begin(None, state, None)
        tic = time.perf_counter()
        for step in range(1, n + 1):
            state.global_step, state.epoch = step, step / n
            callback.on_step_end(None, state, SimpleNamespace())
        elapsed = time.perf_counter() - tic
        events.close()
    return elapsed / n * 1e6


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--profile-to":
        return profile_child(Path(sys.argv[2]), sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1, help="alternating timed runs of each")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-profile", action="store_true", help="timed runs only")
    args = ap.parse_args()
    params = {**PARAMS, "max_steps": args.steps}
    from workers.tools.demo_assets import build_all

    with tempfile.TemporaryDirectory(prefix="prospect-step-profile-") as tmp:
        tmp = Path(tmp)
        demo = build_all(tmp / "models", tmp / "datasets")
        print(f"config: {json.dumps(params)}", flush=True)
        bare, ours = [], []
        for i in range(args.repeat):
            bare.append(run_bare(demo, params, None))
            ours.append(run_ours(demo, params, tmp / f"run-{i}", None))
            print(f"run {i + 1}: bare TRL {bare[-1]:.2f} steps/s, Prospect {ours[-1]:.2f} "
                  "steps/s", flush=True)
        b, p = statistics.median(bare), statistics.median(ours)
        print(f"median steps/s: bare TRL {b:.2f}, Prospect {p:.2f}; ratio Prospect/bare "
              f"{p / b:.3f}", flush=True)
        us = callback_alone()
        print(f"Prospect's callback alone: {us:.1f} µs per step (on_step_end and its "
              f"progress event), {us * p / 1e4:.2f} % of a step "
              f"at {p:.1f} steps/s", flush=True)
        if args.no_profile:
            return
        run_bare(demo, params, tmp / "bare.prof")
        run_ours(demo, params, tmp / "run-profiled", tmp / "ours.prof")
        theirs = breakdown(tmp / "bare.prof", args.steps, args.top, "bare TRL")
        mine = breakdown(tmp / "ours.prof", args.steps, args.top, "Prospect worker")
        print("\nProspect - bare TRL, ms per step:")
        for name in mine:
            print(f"  {name:<48}{mine[name] - theirs[name]:>+8.3f}")


if __name__ == "__main__":
    main()
