"""MLX ``tune: auto`` against the grid a person would search by hand, KTO, effective batch 16.

For each shape (the demo model on demo rows; a mid-size Llama shape built in memory, random
weights and tokens) it measures samples/s of:

(a) the seed defaults: mlx-lm's ``--batch-size 4``, no checkpointing, compiled, with
    grad_accumulation_steps 4 to make the effective batch 16;
(b) every stock combination of batch_size {2, 4, 8, 16} × grad_checkpoint on/off (compiled,
    accumulation = 16 / batch: the effective batch kept; 32 cannot keep 16);
(c) ``tune: auto``: workers/mlx/tune.py's probe over a plan as the server writes it (the grid
    points, no checkpointing first, largest batch first, within ``--probe-budget`` seconds),
    then training with its choice. Its samples/s is counted twice: training alone, and with
    the probe's time spread over a job of ``--job-steps`` updates.

Every point runs workers/mlx/kto.py's own step (through the probe: one untimed step that
traces and compiles, then ``--steps`` timed updates on the job's first effective batch), with
the weights put back between points; each point is measured ``--rounds`` times, interleaved,
and its best round kept; auto's training rate is that of the grid point it chose (measured
apart only if it chose an uncompiled one). The last line is "auto / best grid point = X.XX×"
(probe included), the lower of the shapes'.

    python bench/autotune_mlx.py [--shapes demo,mid] [--steps 2] [--rounds 1]

On a CPU a compiled setting's first step builds its kernels with the C++ compiler (cached
after): the probe pays that once per setting, and it counts in the probe's time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from contract.method_args import MLXKTOArgs  # noqa: E402
from contract.tune import Candidate, TunePlan  # noqa: E402
from workers import tune as driver  # noqa: E402
from workers.mlx.kto import kto_probe  # noqa: E402
from workers.mlx.tune import is_oom  # noqa: E402

EFFECTIVE = 16
BATCHES = (2, 4, 8, 16)
MID = dict(model_type="llama", hidden_size=256, num_hidden_layers=2, intermediate_size=704,
           num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, rms_norm_eps=1e-6,
           tie_word_embeddings=True)  # some 3M parameters
SEED = {"batch_size": 4, "grad_accumulation_steps": EFFECTIVE // 4, "grad_checkpoint": False,
        "compile": True}


def setting(batch: int, checkpoint: bool) -> dict:
    return {"batch_size": batch, "grad_accumulation_steps": EFFECTIVE // batch,
            "grad_checkpoint": checkpoint, "compile": True}


GRID = [setting(b, c) for c in (False, True) for b in sorted(BATCHES, reverse=True)]


def with_lora(model, rank: int = 8):
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": rank, "scale": 2.0,
                                                     "dropout": 0.0})
    mx.eval(model.parameters())
    model.train()
    return model


def demo_case():
    from mlx_lm import load

    from contract.rows import load_kto_dataset
    from workers.mlx.data import tokenize_kto
    from workers.tools.demo_assets import build_all

    tmp = Path(tempfile.mkdtemp(prefix="prospect-autotune-mlx-"))
    paths = build_all(tmp / "models", tmp / "datasets")
    model, tokenizer = load(str(paths["model"]))
    examples, _ = tokenize_kto(load_kto_dataset(paths["dataset"]), tokenizer, 512)
    return with_lora(model), examples, tokenizer.pad_token_id or 0


def mid_case(length: int = 64):
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(0)
    model = Model(ModelArgs(**MID))
    rng = np.random.default_rng(0)
    prompt = length * 3 // 8
    examples = [{"prompt_ids": rng.integers(3, MID["vocab_size"], prompt).tolist(),
                 "completion_ids": rng.integers(3, MID["vocab_size"], length - prompt).tolist(),
                 "label": i % 2 == 0} for i in range(4 * EFFECTIVE)]
    return with_lora(model), examples, 0


class Silent:
    def emit(self, type: str, **fields) -> int:
        return 0


def label(s: dict) -> str:
    return f"{s['batch_size']:>2} × {s['grad_accumulation_steps']:<2} " \
           f"{'ckpt' if s['grad_checkpoint'] else '    '}"


def bench_shape(name: str, case, args) -> float:
    model, examples, pad_id = case()
    job_args = MLXKTOArgs(batch_size=SEED["batch_size"],
                          grad_accumulation_steps=SEED["grad_accumulation_steps"],
                          learning_rate=1e-5, max_seq_length=512, tune="auto")
    probe = kto_probe(model, examples, job_args, pad_id, None)
    points = [SEED, *[g for g in GRID if g != SEED]]
    best: dict[str, tuple[float, int]] = {}
    for r in range(args.rounds):  # interleaved, each round from another point: a busy
        for s in points[r % len(points):] + points[: r % len(points)]:  # machine weighs alike
            tic = time.perf_counter()
            sps, peak = probe(s, args.steps)
            key = label(s)
            best[key] = max(best.get(key, (0.0, 0)), (sps, peak))
            print(f"  {name} {key}: {sps:.2f} samples/s ({time.perf_counter() - tic:.0f} s "
                  "with the untimed first step)", flush=True)

    plan = TunePlan(candidates=[Candidate(g) for g in GRID], baseline=SEED,
                    budget_bytes=0, probe_budget_s=args.probe_budget,
                    probe_steps=args.probe_steps, effective_batch=EFFECTIVE)
    with tempfile.TemporaryDirectory() as run_dir:
        tic = time.perf_counter()
        result = driver.autotune(plan, probe, Silent(), lambda: False, is_oom, Path(run_dir),
                                 driver.describe)
        probe_s = time.perf_counter() - tic
    chosen = result.chosen
    if label(chosen) in best and chosen["compile"]:  # a grid point: its interleaved best
        auto_sps = best[label(chosen)][0]
    else:
        auto_sps = max(probe(chosen, args.steps)[0] for _ in range(args.rounds))
    job_rows = args.job_steps * EFFECTIVE
    auto_total = job_rows / (probe_s + job_rows / auto_sps)

    tokens = sum(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in examples[:EFFECTIVE])
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    print(f"\n{name}: {params / 1e6:.1f}M parameters, effective batch {EFFECTIVE} "
          f"({tokens / EFFECTIVE:.0f} tokens a row), LoRA r8 on every linear layer")
    print(f"{'setting':<16}{'samples/s':>10}{'peak MiB':>10}")
    for key, (sps, peak) in best.items():
        mark = "  <- seed defaults" if key == label(SEED) else ""
        print(f"{key:<16}{sps:>10.2f}{peak / 2**20:>10.0f}{mark}")
    grid_best_key = max((label(g) for g in GRID), key=lambda k: best[k][0])
    grid_best = best[grid_best_key][0]
    seed_sps = best[label(SEED)][0]
    print(f"auto chose {label(chosen)} (compile {chosen['compile']}) after a {probe_s:.1f} s "
          f"probe of {sum(t.outcome == 'ok' for t in result.tried)} settings: "
          f"{auto_sps:.2f} samples/s training, {auto_total:.2f} with the probe over "
          f"{args.job_steps} updates")
    print(f"best grid point {grid_best_key.strip()}: {grid_best:.2f}; seed defaults "
          f"{seed_sps:.2f}; auto / seed = {auto_total / seed_sps:.2f}×")
    ratio = auto_total / grid_best
    print(f"{name}: auto / best grid point = {ratio:.2f}× (training alone "
          f"{auto_sps / grid_best:.2f}×)")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="demo,mid")
    ap.add_argument("--steps", type=int, default=2, help="timed updates per grid point")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--probe-steps", type=int, default=1)
    ap.add_argument("--probe-budget", type=float, default=90.0,
                    help="contract/tune.py's default")
    ap.add_argument("--job-steps", type=int, default=1000,
                    help="updates of the job the probe's time is spread over (the iters "
                         "default)")
    args = ap.parse_args()
    started = time.perf_counter()
    print(f"mlx {mx.__version__} on {mx.default_device()}")
    ratios = [bench_shape(shape, {"demo": demo_case, "mid": mid_case}[shape], args)
              for shape in args.shapes.split(",")]
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")
    print(f"auto / best grid point = {min(ratios):.2f}× (the lower of "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
