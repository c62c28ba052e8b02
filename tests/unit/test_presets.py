"""app/hub/presets.py: the presets file's rules, the download estimate and the Train link
(the endpoint and page around them: tests/api/test_model_cache_api.py)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from app.hub.presets import (
    download_estimate,
    load_extra,
    merged,
    presets_file,
    train_knobs,
    train_url,
)
from app.planner.check import SHAPES, presets


def test_the_file_is_the_setting_or_the_home_default(tmp_path):
    assert presets_file(tmp_path, {}) == tmp_path / "presets.json"
    assert presets_file(tmp_path, {"PROSPECT_PRESETS_FILE": "/x/p.json"}).as_posix() == \
        "/x/p.json"
    assert load_extra(tmp_path / "missing.json", SHAPES) == ([], [])


def test_each_broken_entry_is_named_and_the_rest_load(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([
        {"id": "ok", "model": "acme/tiny", "shape": "qwen2-0.5b"},
        {"id": "ok", "model": "acme/other"},
        {"id": "bad-model", "model": "../etc"},
        {"id": "bad-shape", "model": "acme/x", "shape": "gpt-9"},
        {"id": "half-shape", "model": "acme/x", "shape": {"hidden_size": 8}},
        {"id": "extra", "model": "acme/x", "colour": "red"},
        {"id": "mlx-q", "model": "acme/q", "backend": "mlx", "method": "sft",
         "quantization": {"bits": 4}},
    ]))
    found, problems = load_extra(path, SHAPES)
    assert [p["id"] for p in found] == ["ok", "mlx-q"]
    assert found[0]["title"] == "acme/tiny · torch KTO" and found[0]["origin"] == "file"
    assert found[1]["quantization"] == {"bits": 4, "group_size": 64}
    assert len(problems) == 5, problems
    assert "preset 2 (ok): the id is used twice" in problems[0]
    assert "preset 3: model" in problems[1]
    assert "shape 'gpt-9' is not one of the planner's" in problems[2]
    assert "shape lacks num_hidden_layers, num_attention_heads, vocab_size" in problems[3]
    assert "preset 6: colour" in problems[4]


def test_merged_puts_the_persons_first_and_replaces_by_id():
    seed = presets()
    mine = [{"id": seed[0]["id"], "model": "acme/mirror"}, {"id": "new", "model": "acme/n"}]
    out = merged(seed, mine)
    assert [p["id"] for p in out[:2]] == [seed[0]["id"], "new"]
    assert len(out) == len(seed) + 1 and out[0]["model"] == "acme/mirror"
    assert all(p["origin"] == "seed" for p in out[2:])


def test_download_estimate_follows_the_precision():
    assert download_estimate(None, None) is None
    assert download_estimate(1000, None) == 2000
    assert download_estimate(6400, {"bits": 4, "group_size": 64}) == 6400 * (0.5 + 4 / 64)


def test_train_link_carries_the_knobs_its_method_takes():
    torch = {"model": "Qwen/Q", "backend": "torch", "method": "kto",
             "params": {"gradient_checkpointing": True, "beta": 0.1, "batch_size": 9,
                        "target_modules": ["q_proj", "v_proj"], "precompute_ref_log_probs": False}}
    query = parse_qs(urlsplit(train_url(torch)).query, keep_blank_values=True)
    assert query["model"] == ["Qwen/Q"] and query["backend"] == ["torch"]
    assert query["gradient_checkpointing"] == ["true"]  # the form ticks any non-empty value
    assert query["precompute_ref_log_probs"] == [""]
    assert query["target_modules"] == ["q_proj, v_proj"] and "batch_size" not in query
    mlx_sft = {"model": "m/x", "backend": "mlx", "method": "sft",
               "params": {"learning_rate": 1e-5, "batch_size": 8, "iters": 600}}
    assert train_knobs(mlx_sft) == {"learning_rate": 1e-5, "batch_size": 8, "iters": 600}
    assert parse_qs(urlsplit(train_url(mlx_sft)).query)["method"] == ["sft"]
