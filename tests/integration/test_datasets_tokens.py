"""Token lengths from workers/tools/dataset_tool.py (tokenizers + jinja2, no transformers) agree
with what the workers do with transformers' apply_chat_template (workers/mlx/data.py
tokenize_kto, TRL's split of prompt and completion)."""

from __future__ import annotations

import json

import pytest

from contract.rows import load_kto_dataset
from contract.token_lengths import percentiles
from workers.tools.dataset_tool import tokens


@pytest.mark.parametrize("max_length", [20, 32, 64])
def test_kto_token_counts_match_transformers(demo_home, max_length):
    transformers = pytest.importorskip("transformers")
    from workers.mlx.data import tokenize_kto

    model = demo_home / "models" / "tiny-demo"
    data = demo_home / "datasets" / "demo-kto.jsonl"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    rows = load_kto_dataset(data)
    kept, dropped = tokenize_kto(rows, tokenizer, max_length)
    full, _ = tokenize_kto(rows, tokenizer, 10**9)
    totals = [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in full]
    prompts = [len(r["prompt_ids"]) for r in full]

    got = tokens(str(model), str(data), "kto", max_length)
    assert got["rows"] == len(rows)
    assert got["dropped"] == dropped
    assert got["truncated"] == sum(
        1 for r in kept if len(r["prompt_ids"]) + len(r["completion_ids"]) > max_length)
    assert got["total"] == percentiles(totals)
    assert got["prompt"] == percentiles(prompts)


def test_sft_token_counts_match_transformers(demo_home, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = demo_home / "models" / "tiny-demo"
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    rows = [{"messages": [{"role": "user", "content": "Hi " * i},
                          {"role": "assistant", "content": "Hello there " * (i + 1)}]}
            for i in range(1, 30)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True,
                                                  return_dict=False)) for r in rows]
    got = tokens(str(model), str(data), "sft", 40)
    assert got["total"] == percentiles(expected)
    assert got["truncated"] == sum(n > 40 for n in expected) and got["dropped"] == 0


def test_percentiles_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p95": 95, "p99": 99,
                                                "max": 100, "mean": 50.5}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7, "mean": 7.0}
    assert percentiles([]) == {}
