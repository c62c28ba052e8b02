"""The inference memory estimate and the plan "does it fit beside what runs"
(app/planner/estimate.py, app/planner/check.py): pure, with the machine handed in."""

from __future__ import annotations

import pytest

from app.hub.inspect import _sizes, params_from_config
from app.planner import check
from app.planner.check import machine, plan_beside, shape_facts
from app.planner.estimate import FITS, NO_FIT, TIGHT
from app.planner.inference import inference_estimate

GiB = 2**30
CPU = {"memory_total_bytes": 64 * GiB, "memory_available_bytes": 40 * GiB,
       "cuda_devices": [], "apple_silicon": False}
H200 = {**CPU, "cuda_devices": [{"index": 0, "name": "H200", "memory_total_bytes": 140 * GiB,
                                 "memory_free_bytes": 100 * GiB}]}


def tiny() -> dict:
    c = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
         "tie_word_embeddings": True}
    f = _sizes(c)
    return {**f, "params": params_from_config(f), "quantization": None, "dtype": "float32"}


def test_estimate_counts_weights_kv_cache_and_runtime():
    m = shape_facts("qwen2-0.5b")
    cpu = inference_estimate(m, "torch", "cpu")
    rows = {r["name"]: r["bytes"] for r in cpu["breakdown"]}
    assert rows["weights"] == pytest.approx(m["params"] * 4)  # fp32 on the CPU, as training
    # keys and values: 24 layers x 2 kv heads x 64 dims x 4096 tokens, fp32
    assert rows["KV cache"] == 2 * 24 * 2 * 64 * 4096 * 4
    assert cpu["total_bytes"] == pytest.approx(sum(rows.values()))
    cuda = inference_estimate(m, "torch", "cuda")
    assert cuda["compute_dtype"] == "bfloat16"
    assert {r["name"]: r["bytes"] for r in cuda["breakdown"]}["weights"] == \
        pytest.approx(m["params"] * 2)
    q4 = inference_estimate(shape_facts("llama-3.1-8b", {"bits": 4, "group_size": 64}), "mlx",
                            "gpu")
    assert 4 * GiB < q4["total_bytes"] < 6.5 * GiB  # 8B at 4 bits, the seed guide's ~5 GB
    assert inference_estimate(tiny(), "torch", "cpu")["total_bytes"] < 0.6 * GiB


@pytest.mark.parametrize("others, verdict", [
    ([], FITS),
    ([{"name": "job 1", "bytes": 23 * GiB}], TIGHT),
    ([{"name": "job 1", "bytes": 23 * GiB}, {"name": "m loaded", "bytes": 10 * GiB}], NO_FIT),
])
def test_plan_beside(others, verdict):
    result = plan_beside({"name": "model", "bytes": 10 * GiB}, others, "cpu", CPU)
    assert result["verdict"] == verdict
    assert result["need_bytes"] == 10 * GiB + sum(o["bytes"] for o in others)
    assert result["budget_bytes"] == 40 * GiB
    assert result["message"].startswith("model needs about 10.0 GiB")
    if others:
        assert "beside job 1 at 23.0 GiB" in result["message"]


def test_machine_counts_what_prospect_holds_back_in_and_caps():
    assert machine(system=CPU, cap=0, reclaim=False)["memory_available_bytes"] == 40 * GiB
    seen = machine((3 * GiB, 0), system=CPU, cap=0, reclaim=False)
    assert seen["memory_available_bytes"] == 43 * GiB  # our workers' RSS is ours to free
    capped = machine((3 * GiB, 0), system=CPU, cap=8 * GiB, reclaim=False)
    assert capped["memory_available_bytes"] == 8 * GiB
    assert capped["memory_total_bytes"] == 8 * GiB
    gpu = machine((1 * GiB, 5 * GiB), system=H200, cap=0, reclaim=False)
    assert gpu["cuda_devices"][0]["memory_free_bytes"] == 105 * GiB
    assert plan_beside({"name": "m", "bytes": 104 * GiB}, [], "cuda", gpu)["verdict"] == TIGHT


def test_loaded_models_count_as_free_for_a_job_plan(monkeypatch):
    """A job's plan sees the loaded models' memory as free: they are unloaded for it."""
    monkeypatch.setattr(check, "_reclaimable", lambda: (6 * GiB, 0))
    assert machine(system=CPU, cap=0)["memory_available_bytes"] == 46 * GiB
    assert machine(system=CPU, cap=0, reclaim=False)["memory_available_bytes"] == 40 * GiB


def test_budget_cap_from_the_environment(monkeypatch):
    from app.config import get_settings

    monkeypatch.setenv("PROSPECT_MEMORY_BUDGET_GB", "2")
    get_settings.cache_clear()
    try:
        assert check.budget_cap_bytes() == 2 * GiB
        assert machine(system=CPU, reclaim=False)["memory_available_bytes"] == 2 * GiB
    finally:
        get_settings.cache_clear()
