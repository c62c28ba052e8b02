"""app.planner.estimate: verdicts for fixed cases on an injected machine (an M4 24 GB, CUDA)."""

from __future__ import annotations

from app.planner.check import presets, shape_facts
from app.planner.estimate import FITS, NO_FIT, TIGHT, estimate, mac_budget, metal_working_set, plan

GiB = 2**30
M4_24GB = {"memory_total_bytes": 24 * GiB, "memory_available_bytes": 20 * GiB,
           "platform": "Darwin", "machine": "arm64", "apple_silicon": True,
           "cuda_devices": [], "backends": {}}
H100 = {"memory_total_bytes": 128 * GiB, "memory_available_bytes": 100 * GiB,
        "platform": "Linux", "machine": "x86_64", "apple_silicon": False,
        "cuda_devices": [{"index": 0, "name": "H100", "memory_total_bytes": 80 * GiB,
                          "memory_free_bytes": 79 * GiB}],
        "backends": {"cuda": {"available": True}}}
SEED_KTO = dict(per_device_train_batch_size=2, gradient_accumulation_steps=8, max_length=512,
                gradient_checkpointing=True)


def test_metal_working_set_is_two_thirds_then_three_quarters():
    assert metal_working_set(24 * GiB) == 16 * GiB
    assert metal_working_set(32 * GiB) == int(32 * GiB * 2 / 3)
    assert metal_working_set(64 * GiB) == 48 * GiB
    assert metal_working_set(24 * GiB, wired_limit_mb=20000) == 20000 * 2**20
    b = mac_budget(24 * GiB, 10 * GiB)
    assert b["bytes"] == 10 * GiB  # what is free now, when less than the Metal limit


def test_qwen25_05b_kto_fits_on_a_24gb_m4():
    result = plan(shape_facts("qwen2-0.5b"), "torch", "kto", SEED_KTO, M4_24GB)
    assert result["device"] == "mps" and result["verdict"] == FITS
    assert result["suggestion"] is None
    names = [r["name"] for r in result["estimate"]["breakdown"]]
    assert names == ["weights", "adapter", "optimizer", "gradients", "activations", "logits",
                     "reference pass", "KL pass", "overhead"]
    weights = result["estimate"]["breakdown"][0]["bytes"]
    assert weights == shape_facts("qwen2-0.5b")["params"] * 4  # fp32 on MPS


def test_30b_torch_wont_fit_and_says_what_to_do():
    result = plan(shape_facts("qwen3-30b-a3b"), "torch", "kto", SEED_KTO, M4_24GB)
    assert result["verdict"] == NO_FIT
    assert "Nothing tried fits" in result["message"] and "4-bit MLX" in result["message"]
    assert "smaller model" in result["message"]


def test_a_big_batch_is_fixed_by_the_first_change_that_fits():
    params = dict(SEED_KTO, per_device_train_batch_size=16, max_length=2048,
                  gradient_checkpointing=False)
    result = plan(shape_facts("qwen2-0.5b"), "torch", "kto", params, M4_24GB)
    assert result["verdict"] == NO_FIT
    s = result["suggestion"]
    assert s is not None and s["verdict"] == FITS
    assert s["text"].startswith("turn gradient_checkpointing on")
    assert s["params"]["gradient_checkpointing"] is True
    # The effective batch is kept: batch × accumulation stays 16 × 8.
    assert s["params"]["per_device_train_batch_size"] * \
        s["params"]["gradient_accumulation_steps"] == 16 * 8
    assert plan(shape_facts("qwen2-0.5b"), "torch", "kto", s["params"],
                M4_24GB)["verdict"] == FITS


def test_mlx_7b_suggests_a_4bit_model():
    result = plan(shape_facts("qwen2.5-7b"), "mlx", "sft",
                  dict(batch_size=4, max_seq_length=1024, grad_checkpoint=True), M4_24GB)
    assert result["verdict"] == NO_FIT
    assert "4-bit" in result["suggestion"]["text"]


def test_cuda_budget_and_bf16_weights():
    result = plan(shape_facts("qwen2.5-7b"), "torch", "kto", SEED_KTO, H100)
    assert result["device"] == "cuda" and result["verdict"] == FITS
    assert result["estimate"]["settings"]["compute_dtype"] == "bfloat16"
    assert result["budget"]["bytes"] == 79 * GiB


def test_precompute_and_checkpointing_lower_the_estimate():
    m = shape_facts("qwen2-0.5b")
    base = dict(SEED_KTO, per_device_train_batch_size=8, gradient_checkpointing=False)
    full = estimate(m, "torch", "kto", base, "cuda")["total_bytes"]
    assert estimate(m, "torch", "kto", dict(base, gradient_checkpointing=True),
                    "cuda")["total_bytes"] < full / 3
    assert estimate(m, "torch", "kto", dict(base, precompute_ref_log_probs=True),
                    "cuda")["total_bytes"] < full


def test_every_preset_has_a_verdict_on_the_seed_machine():
    verdicts = {p["id"]: plan(shape_facts(p["shape"], p["quantization"]), p["backend"],
                              p["method"], p["params"], M4_24GB)["verdict"] for p in presets()}
    assert verdicts["torch-qwen2-0.5b"] == FITS
    assert verdicts["mlx-llama-3.1-8b-4bit"] in (FITS, TIGHT)
    assert set(verdicts.values()) <= {FITS, TIGHT, NO_FIT}


def test_torch_on_a_mac_is_pointed_at_mlx_4bit():
    result = plan(shape_facts("qwen2.5-7b"), "torch", "kto", SEED_KTO, M4_24GB)
    assert result["verdict"] == NO_FIT  # 7.6 B parameters in fp32 on MPS
    s = result["suggestion"]
    assert s["backend"] == "mlx" and "4-bit" in s["text"]
    assert s["params"]["batch_size"] == 2 and s["params"]["max_seq_length"] == 512


def test_over_the_metal_limit_but_in_free_memory_names_the_sysctl():
    mac = {**M4_24GB, "memory_total_bytes": 12 * GiB, "memory_available_bytes": 12 * GiB}
    eight_bit = shape_facts("llama-3.1-8b", {"bits": 8, "group_size": 64})
    result = plan(eight_bit, "mlx", "sft", dict(batch_size=1, max_seq_length=256,
                                                grad_checkpoint=True), mac)
    assert result["verdict"] == NO_FIT and result["suggestion"] is None
    assert "iogpu.wired_limit_mb=" in result["message"]
