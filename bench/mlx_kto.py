"""MLX KTO step time against an MLX SFT step on the same batch and model, compiled and not.

Both steps are the workers' own: KTO is workers/mlx/kto.py's ``KTOStep`` (two reference
passes with the adapter off, the policy's KL pass, the policy pass and its backward, Adam);
SFT is workers/mlx/sft.py's ``SFTStep`` (mlx-lm's ``default_loss`` on the same sequences,
the prompt masked out, its gradient, Adam), compiled as the SFT job compiles it. KTO does four
forward passes and one backward where SFT does one of each, so about 2-2.5x an SFT step is
its floor. Models: the demo model on a batch of demo rows, and a mid-size Llama shape built
in memory (random weights, random tokens: speed depends on the shape, not the weights).

Each cell is the median of ``--steps`` timed steps after ``--warmup`` untimed ones (those
trace and, on a CPU, build the compiled kernels: the first step's time is shown apart). The
order of the cells is interleaved per round so a busy machine weighs on all of them alike.

    python bench/mlx_kto.py [--steps 3] [--warmup 2] [--rounds 2] [--shapes demo,mid]

On a CPU the first compiled step also builds kernels with the C++ compiler (cached after).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

from workers.mlx.kto import KTOStep, make_batch, pad_width  # noqa: E402
from workers.mlx.sft import SFTStep  # noqa: E402

BATCH, RANK, MAX_LENGTH = 4, 8, 512
MID = dict(model_type="llama", hidden_size=256, num_hidden_layers=2, intermediate_size=704,
           num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, rms_norm_eps=1e-6,
           tie_word_embeddings=True)  # some 3M parameters
MID_PROMPT, MID_COMPLETION = 24, 40  # 64 tokens a row: a width of 1 + 2 x 32, no padding


def demo_case():
    """The demo model and the first desirable/undesirable rows of the demo set, tokenized."""
    from mlx_lm import load

    from contract.rows import load_kto_dataset
    from workers.mlx.data import tokenize_kto
    from workers.tools.demo_assets import build_all

    tmp = Path(tempfile.mkdtemp(prefix="prospect-mlx-kto-bench-"))
    paths = build_all(tmp / "models", tmp / "datasets")
    model, tokenizer = load(str(paths["model"]))
    rows = load_kto_dataset(paths["dataset"])
    rows = [r for r in rows if r["label"]][:2] + [r for r in rows if not r["label"]][:2]
    examples, _ = tokenize_kto(rows, tokenizer, MAX_LENGTH)
    return model, examples


def mid_case():
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(0)
    model = Model(ModelArgs(**MID))
    rng = np.random.default_rng(0)
    examples = [{"prompt_ids": rng.integers(3, MID["vocab_size"], MID_PROMPT).tolist(),
                 "completion_ids": rng.integers(3, MID["vocab_size"], MID_COMPLETION).tolist(),
                 "label": i % 2 == 0} for i in range(BATCH)]
    return model, examples


def with_lora(model):
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": RANK, "scale": 2.0,
                                                     "dropout": 0.0})
    mx.eval(model.parameters())
    model.train()
    return model


def sft_step(model, compile: bool):
    """workers/mlx/sft.py's step (SFTStep), as the SFT job builds it, on one micro-batch."""
    step = SFTStep(model, optim.Adam(learning_rate=1e-5), compile=compile)

    def run(batch, lengths):
        loss, _ = step([(batch, lengths)])
        return loss.item()
    return run


def cells(model, examples):
    """name -> a function running one step: SFT and KTO, compiled and not."""
    # One batch for all four: padded as the compiled KTO step pads (to 1 + a multiple of 32
    # tokens, as mlx-lm pads SFT's), so the eager steps see the same shape; SFT trains on the
    # same sequences (prompt + completion), its loss on the completion only.
    kto_batch = make_batch(examples, MAX_LENGTH, 0)
    keys = ("input_ids", "completion_mask", "KL_input_ids", "KL_completion_mask")
    kto_batch.update(zip(keys, pad_width([kto_batch[k] for k in keys], 32), strict=True))
    ids = kto_batch["input_ids"]
    lengths = mx.array([[len(e["prompt_ids"]), len(e["prompt_ids"]) + len(e["completion_ids"])]
                        for e in examples])
    out = {}
    for compile in (False, True):
        tag = "compiled" if compile else "eager"
        sft = sft_step(model, compile)
        kto = KTOStep(model, optim.Adam(learning_rate=1e-5), 0.1, 1.0, 1.0, compile=compile)
        out[f"sft {tag}"] = lambda f=sft: f(ids, lengths)
        out[f"kto {tag}"] = lambda f=kto: f(kto_batch)["loss"]
    return out, make_batch(examples, MAX_LENGTH, 0)["input_ids"].shape[1], ids.shape[1]


def measure(name: str, model, examples, args) -> dict[str, dict[str, float]]:
    fns, width, padded = cells(model, examples)
    first, times = {}, {k: [] for k in fns}
    for k, fn in fns.items():
        tic = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - tic
        for _ in range(args.warmup - 1):
            fn()
    for _ in range(args.rounds):
        for k, fn in fns.items():  # interleaved: a busy machine slows every cell alike
            for _ in range(args.steps):
                tic = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - tic)
    params = sum(v.size for _, v in _leaves(model.parameters()))
    print(f"\n{name}: {params / 1e6:.1f}M parameters, batch {BATCH} x {width} tokens "
          f"(padded to {padded}), LoRA r{RANK} on every linear layer")
    print(f"{'step':<14}{'median ms':>10}{'min ms':>9}{'first ms':>10}")
    result = {}
    for k, ts in times.items():
        result[k] = {"median": statistics.median(ts), "min": min(ts), "first": first[k]}
        print(f"{k:<14}{result[k]['median'] * 1e3:>10.1f}{min(ts) * 1e3:>9.1f}"
              f"{first[k] * 1e3:>10.0f}")
    for tag in ("eager", "compiled"):
        ratio = result[f"kto {tag}"]["median"] / result[f"sft {tag}"]["median"]
        print(f"KTO / SFT, {tag}: {ratio:.2f}x  (floor about 2-2.5x)")
    for method in ("sft", "kto"):
        speedup = result[f"{method} eager"]["median"] / result[f"{method} compiled"]["median"]
        print(f"{method.upper()} compiled speed-up: {speedup:.2f}x")
    return result


def _leaves(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per cell and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="demo,mid")
    args = ap.parse_args()
    started = time.perf_counter()
    print(f"mlx {mx.__version__} on {mx.default_device()}")
    for shape in args.shapes.split(","):
        model, examples = {"demo": demo_case, "mid": mid_case}[shape]()
        measure(shape, with_lora(model), examples, args)
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
