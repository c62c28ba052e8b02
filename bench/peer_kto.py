"""The peer bench: the same tiny KTO job through LLaMA-Factory, bare TRL and Prospect.

One job, three stacks, one run on this machine's CPU: the offline demo model (a 2-layer
Llama) and its 320 KTO rows, batch 4, 64 tokens, LoRA r8 (alpha 16, dropout 0.05) on every
linear layer, learning rate 1e-4 with linear decay after 10 % warm-up, 200 optimizer steps,
logging every 10, no evaluation, no checkpoint before the end, fp32, no activation
checkpointing.

- LLaMA-Factory: its own CLI (``llamafactory-cli train cfg.yaml``) from its own venv (given by
  ``--lf-python``; it pins its own transformers/TRL/PEFT), reading the rows written once in its
  KTO format (alpaca columns + ``kto_tag``, a dataset_info.json), template ``empty`` so the
  text is the row's text;
- bare TRL: bench/bare_trl.py (KTOTrainer alone, Prospect's venv);
- Prospect: a real ``prospect serve``, the job submitted over REST (bench/common.py).

Each stack's data loading and tokenization differ, so the measure is the training loop
alone: HF Trainer's own ``train_steps_per_second`` (steps / ``train_runtime``), the same in
all three. Beside it, the CPU time of the same loop (bench/peer_timing/sitecustomize.py wraps
``Trainer.train`` once in each stack's process: no per-step cost), CPU ms per step: on a
machine shared with other work a wall clock measures the neighbours, a CPU clock much less
(with ``--threads 1`` no idle OpenMP thread spins either: with torch's default two threads
on this 2-core machine while other work ran, every stack ran 10-20x slower, LLaMA-Factory at
1.8 steps/s and 304 CPU ms a step instead of about 40 and 18). Runs alternate ``--repeat`` times;
medians and spreads are printed; the last line is "Prospect / LLaMA-Factory = X.XX×" (steps/s).

    python bench/peer_kto.py [--repeat 3] [--threads 1] [--lf-python /work/lf-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Server, init_home  # noqa: E402

STEPS, BATCH, LENGTH, RANK, ALPHA, DROPOUT, LR, WARMUP = 200, 4, 64, 8, 16, 0.05, 1e-4, 0.1
PARAMS = {"max_steps": STEPS, "per_device_train_batch_size": BATCH,
          "gradient_accumulation_steps": 1, "max_length": LENGTH, "learning_rate": LR,
          "r": RANK, "lora_alpha": ALPHA, "lora_dropout": DROPOUT,
          "target_modules": ["all-linear"], "warmup_ratio": WARMUP, "beta": 0.1,
          "gradient_checkpointing": False, "precompute_ref_log_probs": False,
          "logging_steps": 10, "save_steps": 100_000, "device": "cpu", "dtype": "float32",
          "seed": 42}


def lf_config(model: str, data_dir: Path, out: Path) -> str:
    """LLaMA-Factory's YAML for the same job (its option names; JSON is valid YAML)."""
    return json.dumps({
        "model_name_or_path": model, "stage": "kto", "do_train": True,
        "finetuning_type": "lora", "lora_rank": RANK, "lora_alpha": ALPHA,
        "lora_dropout": DROPOUT, "lora_target": "all", "pref_beta": 0.1,
        "kto_chosen_weight": 1.0, "kto_rejected_weight": 1.0,
        "dataset": "demo_kto", "dataset_dir": str(data_dir), "template": "empty",
        "cutoff_len": LENGTH, "overwrite_cache": True, "preprocessing_num_workers": 1,
        "output_dir": str(out), "overwrite_output_dir": True, "logging_steps": 10,
        "save_strategy": "no", "plot_loss": False, "report_to": "none",
        "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1,
        "learning_rate": LR, "max_steps": STEPS, "lr_scheduler_type": "linear",
        "warmup_ratio": WARMUP, "disable_gradient_checkpointing": True, "seed": 42,
        "bf16": False, "fp16": False, "use_cpu": True, "disable_tqdm": True,
    }, indent=1)


def text_rows(rows_file: Path) -> list[dict]:
    """The demo rows as plain text (its chat-format rows written in the style of the others),
    so that no stack's chat template changes what is trained on."""
    rows = []
    for line in rows_file.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if isinstance(r["prompt"], list):
            r = {"prompt": f"Question: {r['prompt'][-1]['content']}\nAnswer:",
                 "completion": f" {r['completion'][-1]['content']}", "label": r["label"]}
        rows.append(r)
    return rows


def write_datasets(rows_file: Path, data_dir: Path) -> Path:
    """The same rows twice: Prospect's JSONL (for Prospect and bare TRL), and LLaMA-Factory's
    KTO format (alpaca columns, a boolean kto_tag, a dataset_info.json). Returns the JSONL."""
    rows = text_rows(rows_file)
    data_dir.mkdir(parents=True, exist_ok=True)
    jsonl = rows_file.with_name("peer-kto.jsonl")  # in the home: a folder Prospect may read
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data_dir / "demo_kto.json").write_text(json.dumps(
        [{"instruction": r["prompt"], "output": r["completion"], "kto_tag": bool(r["label"])}
         for r in rows]))
    (data_dir / "dataset_info.json").write_text(json.dumps({"demo_kto": {
        "file_name": "demo_kto.json",
        "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}}}))
    return jsonl


def timed_env(times: Path) -> None:
    """This process's environment, inherited by every stack (the server passes it on to its
    worker): the Trainer.train wrapper on, writing to ``times``."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "bench" / "peer_timing"), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PEER_TRAIN_TIMES"] = str(times)
    times.unlink(missing_ok=True)


def loop_times(times: Path) -> dict:
    """The training call's wall and CPU seconds the wrapper wrote (its last line)."""
    if not times.exists():
        raise SystemExit(f"no Trainer.train timing in {times}: was the wrapper loaded?")
    return json.loads(times.read_text().splitlines()[-1])


def run_lf(lf_python: Path, model: str, data_dir: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    cfg = work / "cfg.yaml"
    cfg.write_text(lf_config(model, data_dir, work / "out"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "DISABLE_VERSION_CHECK": "1", "CUDA_VISIBLE_DEVICES": "", "WANDB_DISABLED": "true"}
    cli = lf_python.parent / "llamafactory-cli"
    out = subprocess.run([str(lf_python), str(cli), "train", str(cfg)], cwd=work, env=env,
                         capture_output=True, text=True, check=False)
    results = work / "out" / "train_results.json"
    if out.returncode or not results.exists():
        raise SystemExit(f"LLaMA-Factory run failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    m = json.loads(results.read_text())
    state = json.loads((work / "out" / "trainer_state.json").read_text())
    m["steps"] = state["global_step"]
    return m


def run_bare(model: str, dataset: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_trl.py"), "--model", model,
                          "--dataset", dataset, "--params", json.dumps(PARAMS)],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"bare TRL run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_prospect(home: Path, model: str, dataset: str) -> dict:
    """The job over REST; also the server's own CPU time while the job ran (it shares the
    machine's cores with the worker: what it spends on the job's events, the worker lacks)."""
    with Server(home) as server:
        proc = psutil.Process(server.proc.pid)
        before = sum(proc.cpu_times()[:2])
        job = server.run_job({"name": "peer-bench", "model": model, "dataset": dataset,
                              "params": PARAMS})
        server_cpu_s = sum(proc.cpu_times()[:2]) - before
    s = job["summary"]
    return {"train_steps_per_second": s["steps_per_s"], "train_runtime": s["train_runtime_s"],
            "steps": s["steps"], "server_cpu_s": server_cpu_s}


def with_env(env: dict[str, str], fn, *args):
    """``fn(*args)`` with ``env`` added to this process's environment, then taken out."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f} (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs of the three")
    ap.add_argument("--lf-python", type=Path, default=Path("/work/lf-venv/bin/python"),
                    help="the python of a venv with llamafactory installed")
    ap.add_argument("--skip", choices=("lf", "bare", "prospect"), action="append", default=[],
                    help="leave a stack out (repeatable)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for all three (default: "
                    "torch's own choice)")
    ap.add_argument("--prospect-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for Prospect's server (and so its worker) "
                    "alone, e.g. MALLOC_TRIM_THRESHOLD_=67108864 (repeatable)")
    args = ap.parse_args()
    prospect_env = dict(kv.split("=", 1) for kv in args.prospect_env)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    runs: dict[str, list[float]] = {"LLaMA-Factory": [], "bare TRL": [], "Prospect": []}
    cpu_ms: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="prospect-peer-") as tmp:
        tmp = Path(tmp)
        demo = init_home(tmp / "home")
        dataset = str(write_datasets(Path(demo["dataset"]), tmp / "lf-data"))
        print(f"config: {json.dumps(PARAMS)}", flush=True)
        for i in range(args.repeat):
            stacks = {"LLaMA-Factory": lambda i=i: run_lf(args.lf_python, demo["model"],
                                                          tmp / "lf-data", tmp / f"lf-{i}"),
                      "bare TRL": lambda: run_bare(demo["model"], dataset),
                      "Prospect": lambda: with_env(prospect_env, run_prospect, tmp / "home",
                                                   demo["model"], dataset)}
            skip = {"lf": "LLaMA-Factory", "bare": "bare TRL", "prospect": "Prospect"}
            for name, run in stacks.items():
                if name in {skip[s] for s in args.skip}:
                    continue
                timed_env(tmp / "times.jsonl")
                m = run()
                t = loop_times(tmp / "times.jsonl")
                if m["steps"] != STEPS or t["steps"] != STEPS:
                    raise SystemExit(f"{name} ran {m['steps']} steps, not {STEPS}")
                runs[name].append(m["train_steps_per_second"])
                cpu_ms[name].append(t["cpu_s"] / STEPS * 1e3)
                print(f"run {i + 1}: {name:<14} {m['train_steps_per_second']:6.2f} steps/s "
                      f"({m['steps']} steps in {m['train_runtime']:.1f} s), "
                      f"{cpu_ms[name][-1]:.1f} CPU ms/step, "
                      f"{t.get('minor_faults', 0) / STEPS:.0f} page faults/step"
                      + (f" (the server beside it: {m['server_cpu_s']:.2f} CPU s in all)"
                         if "server_cpu_s" in m else ""), flush=True)
    for name, values in runs.items():
        if values:
            print(f"{name:<14} steps/s: {spread(values)}; CPU ms/step: {spread(cpu_ms[name])}")
    cpu = {name: statistics.median(v) for name, v in cpu_ms.items() if v}
    if "Prospect" in cpu and "LLaMA-Factory" in cpu:
        print(f"by CPU time per step: Prospect / LLaMA-Factory = "
              f"{cpu['LLaMA-Factory'] / cpu['Prospect']:.2f}×")
    med = {name: statistics.median(v) for name, v in runs.items() if v}
    if "bare TRL" in med and "LLaMA-Factory" in med:
        print(f"bare TRL / LLaMA-Factory = {med['bare TRL'] / med['LLaMA-Factory']:.2f}×")
    if "Prospect" in med and "bare TRL" in med:
        print(f"Prospect / bare TRL = {med['Prospect'] / med['bare TRL']:.2f}×")
    if "Prospect" in med and "LLaMA-Factory" in med:
        print(f"Prospect / LLaMA-Factory = {med['Prospect'] / med['LLaMA-Factory']:.2f}×")


if __name__ == "__main__":
    main()
