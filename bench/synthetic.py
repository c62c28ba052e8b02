"""Offline stand-ins for real models and data, for benchmarks: nothing is downloaded.

    python bench/synthetic.py --out DIR [--shape qwen2-0.5b] [--rows 512] [--tokens 500]

Writes DIR/model (a randomly initialised model of the named shape, with the demo tokenizer and
chat template) and DIR/kto.jsonl (KTO rows of about --tokens tokens each, both labels). Speed
and memory depend on the shape and sequence length, not on what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.tools.demo_assets import build_model, demo_rows  # noqa: E402

SHAPES = {  # the published configs' sizes (vocabulary kept: it dominates logits memory)
    "qwen2-0.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                       hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True),
}


def build(out: Path, shape: str, rows: int, tokens: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo = build_model(Path(tmp) / "demo")
        tok = AutoTokenizer.from_pretrained(demo)
        ids = json.loads((demo / "config.json").read_text())
        cfg = AutoConfig.for_model(**SHAPES[shape], bos_token_id=ids["bos_token_id"],
                                   eos_token_id=ids["eos_token_id"],
                                   pad_token_id=ids["pad_token_id"])
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        for f in ("chat_template.jinja",):
            if (demo / f).exists():
                shutil.copy(demo / f, out / "model" / f)
    rng = random.Random(0)
    base = demo_rows()
    text = lambda r: r["completion"] if isinstance(r["completion"], str) else \
        r["completion"][0]["content"]  # noqa: E731
    with open(out / "kto.jsonl", "w") as f:
        for i in range(rows):
            prompt = " ".join(text(rng.choice(base)) for _ in range(6))
            n_tok = len(tok(prompt)["input_ids"])
            parts = []
            while n_tok < tokens:
                parts.append(text(rng.choice(base)))
                n_tok += len(tok(" " + parts[-1])["input_ids"])
            f.write(json.dumps({"prompt": prompt, "completion": " ".join(parts),
                                "label": i % 2 == 0}) + "\n")
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": str(out / "model"), "dataset": str(out / "kto.jsonl"),
                      "parameters": params}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shape", default="qwen2-0.5b", choices=sorted(SHAPES))
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=500, help="prompt + completion tokens a row")
    a = ap.parse_args()
    build(a.out, a.shape, a.rows, a.tokens)
