"""tune: auto against the seed defaults and against every stock setting a person could pick by
hand (issue 14), each a real torch KTO job through Prospect (a real `prospect serve`, jobs over
REST), the same rows and steps.

For each effective batch E it runs
  (a) the seed defaults: per-device batch 2 × accumulation E/2, checkpointing on;
  (b) the grid: per-device batch {2,4,8,16,32,64} (≤ E) × checkpointing on/off ×
      precompute_ref_log_probs on/off, accumulation E / batch; a point that runs out of
      memory is reported as such;
  (c) tune: auto (the server plans, the worker times its candidates, then trains), its
      samples/s counted over the probe's time plus the training's.
Every run's samples/s counts its steps over TRL's train_runtime plus the data preparation
just before training (tokenizing; with precompute also the reference pass, which TRL's
runtime leaves out).
and prints samples/s and peak memory of each (CUDA: the allocator's peak; CPU: the RSS), then,
last, "auto / best grid point = X.XX×  (auto / seed defaults = Y.YY×)" for the first E.

    python bench/autotune.py                      # CPU, the tiny demo model, E 16
    python bench/autotune.py --shape mid          # CPU, a mid-size shape (a few minutes a run)
    python bench/autotune.py --cuda               # the issue's shape on one GPU: Qwen2-0.5B
                                                  # shape, bf16, LoRA r16 all-linear,
                                                  # 512-token rows, 30 steps, E 16 and 64

On the GPU machine (one H200; the device tool's `run`, carry [".whl"]: wheels of what it
lacks, trl, liger-kernel, transformers 5.24, the server's deps; made with pip download, see
the report of issue 14), one command per effective batch to stay under 10 minutes each:
    pip install -q --no-deps --no-index .whl/*.whl && \
    python bench/autotune.py --cuda --effective 16 --batches 4,8,16 --no-precompute \
        --out $OUT/autotune16.jsonl
    pip install -q --no-deps --no-index .whl/*.whl && \
    python bench/autotune.py --cuda --effective 64 --steps 10 --batches 16,32,64 \
        --no-precompute --out $OUT/autotune64.jsonl
(--batches / --no-precompute / --steps trim the grid to fit the time: the full grid at E 16
and 30 steps is ~18 jobs, ~17 minutes; precompute never pays in one pass over the rows.
Each result is printed and appended to --out as it finishes, so a run cut short keeps what
it measured.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, init_home  # noqa: E402

MID = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=256,
           intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=16000, max_position_embeddings=4096,
           rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
BATCHES = (2, 4, 8, 16, 32, 64)


def assets(kind: str, root: Path, rows: int) -> tuple[str, str, dict]:
    """(model, dataset, the job's fixed knobs) for the tiny, mid or cuda shape."""
    if kind == "tiny":
        demo = init_home(root)
        return demo["model"], demo["dataset"], {"max_length": 128, "device": "cpu"}
    import synthetic

    shape, tokens = ("qwen2-0.5b", 500) if kind == "cuda" else ("mid", 200)
    synthetic.SHAPES.setdefault("mid", MID)
    synthetic.build(root / "synthetic", shape, rows, tokens)
    knobs = {"max_length": 512 if kind == "cuda" else 256, "r": 16, "lora_alpha": 32,
             "target_modules": ["all-linear"], "device": "cuda" if kind == "cuda" else "cpu"}
    return str(root / "synthetic" / "model"), str(root / "synthetic" / "kto.jsonl"), knobs


def rows_for(source: str, n: int, out: Path) -> str:
    """The rows the run reads: ``n`` (E × steps, so the reference precompute covers what
    training uses), the source's rows repeated when it has fewer."""
    lines = [x for x in Path(source).read_text().splitlines() if x.strip()]
    out.write_text("\n".join(lines[i % len(lines)] for i in range(n)) + "\n")
    return str(out)


def setting(batch: int, e: int, ckpt: bool, pre: bool) -> dict:
    return {"per_device_train_batch_size": batch, "gradient_accumulation_steps": e // batch,
            "gradient_checkpointing": ckpt, "precompute_ref_log_probs": pre}


def name(s: dict) -> str:
    return (f"batch {s['per_device_train_batch_size']:>2} × {s['gradient_accumulation_steps']:>2}"
            f", {'ckpt on ' if s['gradient_checkpointing'] else 'ckpt off'}"
            f"{', precompute' if s['precompute_ref_log_probs'] else ''}")


def run(server: Server, model: str, dataset: str, params: dict) -> dict:
    """One job; its samples/s (over the probe's time too, when tuned) and peak memory."""
    t0 = time.perf_counter()
    job = server.call("/api/jobs", {"name": "autotune-bench", "model": model,
                                    "dataset": dataset, "params": params})
    while job["status"] not in ("succeeded", "failed", "cancelled", "interrupted") \
            or job["pid"] is not None:
        time.sleep(1.0)
        job = server.call(f"/api/jobs/{job['id']}")
    wall = time.perf_counter() - t0
    out = {"status": job["status"], "wall_s": round(wall, 1), "params": job["params"]}
    if job["status"] != "succeeded":
        text = f"{job.get('error')} {job.get('log_tail') or ''}"
        out["oom"] = "out of memory" in text.lower() or "OutOfMemoryError" in text
        out["error"] = str(job.get("error"))[:300]
        return out
    s = job["summary"]
    e = params["per_device_train_batch_size"] * params["gradient_accumulation_steps"]
    tuning = job.get("tuning") or {}
    probe_s = float(tuning.get("probe_s") or 0.0)
    prep_s = preparation_s(Path(job["run_dir"]))
    out.update(samples_per_s=s["steps"] * e / (s["train_runtime_s"] + probe_s + prep_s),
               train_samples_per_s=s["steps"] * e / (s["train_runtime_s"] + prep_s),
               probe_s=probe_s, prep_s=round(prep_s, 2),
               peak_bytes=s.get("peak_backend_bytes") or s.get("peak_rss_bytes"),
               message=tuning.get("message"))
    plan = Path(job["run_dir"]) / "tune_plan.json"
    if tuning and plan.is_file():
        chosen = tuning.get("chosen") or {}
        for c in json.loads(plan.read_text())["candidates"]:
            if all(c["settings"].get(k) == v for k, v in chosen.items()):
                out["planned_bytes"] = c["estimate_bytes"]
    return out


def preparation_s(run_dir: Path) -> float:
    """Seconds from the status before "training" (tokenizing, or tokenizing and computing the
    reference log-probs once: precompute's cost, which TRL's train_runtime leaves out) to
    "training": counted in every run's samples/s, so precompute pays its own way."""
    statuses = []
    for raw in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(raw)
        if event.get("type") == "status":
            statuses.append((event["phase"], event["t"]))
    for (_, before), (phase, t) in zip(statuses, statuses[1:], strict=False):
        if phase == "training":
            return max(t - before, 0.0)
    return 0.0


def line(label: str, r: dict) -> str:
    if r["status"] != "succeeded":
        return f"{label:<44} {'out of memory' if r.get('oom') else r['status']}"
    gib = (r.get("peak_bytes") or 0) / 2**30
    extra = f"  (probe {r['probe_s']:.0f} s, training alone {r['train_samples_per_s']:.2f}/s)" \
        if r.get("probe_s") else ""
    return f"{label:<44} {r['samples_per_s']:8.2f} samples/s  peak {gib:6.2f} GiB{extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="the issue's GPU shape")
    ap.add_argument("--shape", choices=("tiny", "mid"), default="tiny", help="CPU shape")
    ap.add_argument("--effective", default=None, help="effective batches (default 16; "
                    "--cuda 16,64)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 30; "
                    "tiny 20)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--no-precompute", action="store_true", help="grid without precompute")
    ap.add_argument("--no-grid", action="store_true", help="seed defaults and auto only")
    ap.add_argument("--out", type=Path, help="append each result as a JSON line")
    a = ap.parse_args()
    kind = "cuda" if a.cuda else a.shape
    effs = [int(x) for x in (a.effective or ("16,64" if a.cuda else "16")).split(",")]
    steps = a.steps or (20 if kind == "tiny" else 30)
    batches = [int(x) for x in a.batches.split(",")]
    base = {"max_steps": steps, "learning_rate": 1e-5, "logging_steps": 10,
            "save_steps": 100_000, "warmup_ratio": 0.0}
    summary: list[tuple[int, float | None, float | None, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="prospect-autotune-bench-") as tmp:
        root = Path(tmp)
        model, source, knobs = assets(kind, root, rows=max(effs) * steps)
        print(f"shape {kind}: model {model}, {steps} steps, effective batch {effs}",
              flush=True)
        with Server(root) as server:
            for e in effs:
                print(f"\n-- effective batch {e}", flush=True)
                dataset = rows_for(source, e * steps, root / f"rows-{e}.jsonl")

                def job(s: dict, tune: str = "off", e: int = e, dataset: str = dataset) -> dict:
                    r = run(server, model, dataset, {**base, **knobs, **s, "tune": tune})
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps({"e": e, "tune": tune, **s, **r}) + "\n")
                    return r

                seed = job(setting(2, e, True, False))
                print(line("(a) seed defaults " + name(setting(2, e, True, False)), seed),
                      flush=True)
                grid = []
                if not a.no_grid:
                    for b in [b for b in batches if b <= e and e % b == 0]:
                        for ckpt in (True, False):
                            for pre in (False,) if a.no_precompute else (False, True):
                                s = setting(b, e, ckpt, pre)
                                r = job(s)
                                grid.append(r)
                                print(line("(b) " + name(s), r), flush=True)
                auto = job(setting(2, e, True, False), tune="auto")
                print(line("(c) tune auto", auto), flush=True)
                if auto.get("message"):
                    print(f"    {auto['message']}", flush=True)
                if auto.get("planned_bytes"):
                    print(f"    planned peak {auto['planned_bytes'] / 2**30:.2f} GiB, "
                          f"measured {(auto.get('peak_bytes') or 0) / 2**30:.2f} GiB",
                          flush=True)
                ok = [r["samples_per_s"] for r in grid if r["status"] == "succeeded"]
                summary.append((e, auto.get("samples_per_s"), max(ok) if ok else None,
                                seed.get("samples_per_s")))
                walls = [r["wall_s"] for r in grid if r["status"] == "succeeded"]
                print(f"    training alone: auto / best grid point = "
                      f"{_ratio(auto.get('train_samples_per_s'), max(ok) if ok else None)}; "
                      f"job wall time: auto {auto['wall_s']:.0f} s, seed defaults "
                      f"{seed['wall_s']:.0f} s, fastest grid job "
                      f"{min(walls) if walls else float('nan'):.0f} s", flush=True)
    for e, auto_sps, best, seed_sps in summary[1:]:
        print(f"E {e}: auto / best grid point = {_ratio(auto_sps, best)}  "
              f"(auto / seed defaults = {_ratio(auto_sps, seed_sps)})")
    e, auto_sps, best, seed_sps = summary[0]
    print(f"auto / best grid point = {_ratio(auto_sps, best)}  "
          f"(auto / seed defaults = {_ratio(auto_sps, seed_sps)})  [E {e}]")


def _ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.2f}×" if x and y else "n/a"


if __name__ == "__main__":
    main()
