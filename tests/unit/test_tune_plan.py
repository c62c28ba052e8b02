"""app.planner.tune: the grid auto-tuning times, pruned by the memory planner, on injected
machines (an H200, a 64 GiB CPU box, a small one)."""

from __future__ import annotations

import pytest

from app.planner.check import shape_facts
from app.planner.estimate import budget_for, estimate, target_device, verdict
from app.planner.tune import (
    HOST_RATIO,
    MAX_CANDIDATES,
    PROBE_MAX_S,
    batch_sizes,
    grid,
    larger_batch_hint,
    probe_budget,
    tune_plan,
)
from contract.knobs import method_for
from contract.tune import BATCH_KNOBS, SPEED_KNOBS, TunePlan, effective_batch

GiB = 2**30
H200 = {"memory_total_bytes": 128 * GiB, "memory_available_bytes": 100 * GiB,
        "apple_silicon": False, "backends": {"cuda": {"available": True}},
        "cuda_devices": [{"index": 0, "name": "H200", "memory_total_bytes": 139 * GiB,
                          "memory_free_bytes": 138 * GiB}]}
CPU_64 = {"memory_total_bytes": 64 * GiB, "memory_available_bytes": 40 * GiB,
          "cuda_devices": [], "backends": {}}
QWEN = shape_facts("qwen2-0.5b")


def torch_kto(**knobs) -> dict:
    return method_for("torch", "kto").validate(knobs)


def test_batch_sizes_divide_the_effective_batch_and_kto_needs_two():
    assert batch_sizes(16, "kto") == [2, 4, 8, 16]
    assert batch_sizes(16, "sft") == [1, 2, 4, 8, 16]
    assert batch_sizes(6, "kto") == [2, 6]  # powers of two that divide it, and E itself
    assert batch_sizes(12, "sft") == [1, 2, 4, 12]


def test_every_candidate_keeps_the_effective_batch_and_names_only_speed_knobs():
    for backend, method, knobs in (("torch", "kto", {"gradient_accumulation_steps": 32}),
                                   ("mlx", "kto", {"grad_accumulation_steps": 8}),
                                   ("mlx", "sft", {"grad_accumulation_steps": 4})):
        params = method_for(backend, method).validate(knobs)
        plan = tune_plan(QWEN, backend, method, params, H200 if backend == "torch" else CPU_64)
        assert plan is not None and plan.candidates
        e = effective_batch(backend, params)
        assert plan.effective_batch == e
        for c in plan.candidates:
            assert set(c.settings) <= set(SPEED_KNOBS[(backend, method)])
            assert effective_batch(backend, c.settings) == e
            assert method_for(backend, method).validate({**params, **c.settings})
        assert effective_batch(backend, plan.baseline) == e


def test_on_an_h200_the_biggest_batch_without_checkpointing_comes_first():
    plan = tune_plan(QWEN, "torch", "kto", torch_kto(max_steps=30), H200)
    first = plan.candidates[0].settings
    assert first["per_device_train_batch_size"] == 16
    assert first["gradient_accumulation_steps"] == 1
    assert first["gradient_checkpointing"] is False
    assert plan.candidates[0].label == "batch 16 × 1, no checkpointing"
    assert len(plan.candidates) <= MAX_CANDIDATES
    # The baseline is the seed defaults at this effective batch: 2 × 8, checkpointing on.
    assert plan.baseline == {"per_device_train_batch_size": 2,
                             "gradient_accumulation_steps": 8, "gradient_checkpointing": True,
                             "precompute_ref_log_probs": False, "use_liger_kernel": False}
    assert plan.device_total_bytes == 139 * GiB and plan.budget_bytes == 138 * GiB
    # The JSON round trip the worker reads.
    assert TunePlan.from_json(plan.to_json()) == plan


def test_the_baseline_keeps_a_larger_effective_batch_by_accumulating():
    plan = tune_plan(QWEN, "torch", "kto", torch_kto(gradient_accumulation_steps=32), H200)
    assert plan.baseline["per_device_train_batch_size"] == 2
    assert plan.baseline["gradient_accumulation_steps"] == 32
    assert plan.candidates[0].settings["per_device_train_batch_size"] == 64


def test_only_settings_that_fit_with_a_margin_are_kept():
    small = {"memory_total_bytes": 16 * GiB, "memory_available_bytes": 12 * GiB,
             "cuda_devices": [], "backends": {}}
    params = torch_kto(gradient_accumulation_steps=32, max_length=1024)
    plan = tune_plan(QWEN, "torch", "kto", params, small)
    assert plan is not None
    budget = budget_for("cpu", small)
    kept = [c.settings for c in plan.candidates]
    for s in grid("torch", "kto", params, "cpu", kernels=False):
        ratio = verdict(estimate(QWEN, "torch", "kto", {**params, **s}, "cpu"), budget)[1]
        if ratio > HOST_RATIO:
            assert s not in kept  # pruned
    assert all(c.estimate_bytes <= HOST_RATIO * budget["available"] for c in plan.candidates)
    # Something was pruned here: the biggest batch without checkpointing does not fit.
    assert not any(s["per_device_train_batch_size"] == 64 and not s["gradient_checkpointing"]
                   for s in kept)


def test_nothing_fits_gives_no_plan():
    tiny = {"memory_total_bytes": 2 * GiB, "memory_available_bytes": 1 * GiB,
            "cuda_devices": [], "backends": {}}
    assert tune_plan(QWEN, "torch", "kto", torch_kto(), tiny) is None


def test_precompute_only_where_it_pays():
    one_pass = tune_plan(QWEN, "torch", "kto", torch_kto(), CPU_64, rows=1000)
    assert not any(c.settings["precompute_ref_log_probs"] for c in one_pass.candidates)
    epochs = tune_plan(QWEN, "torch", "kto", torch_kto(num_train_epochs=3), CPU_64, rows=100)
    assert epochs.candidates[0].settings["precompute_ref_log_probs"] is True
    # Steps that read the data many times count as epochs too.
    steps = tune_plan(QWEN, "torch", "kto", torch_kto(max_steps=200), CPU_64, rows=64)
    assert any(c.settings["precompute_ref_log_probs"] for c in steps.candidates)


def test_liger_only_on_cuda_with_the_package_and_never_with_precompute():
    params = torch_kto(num_train_epochs=3)
    with_cuda = grid("torch", "kto", params, "cuda", kernels=True)
    assert any(s["use_liger_kernel"] for s in with_cuda)
    assert not any(s["use_liger_kernel"] and s["precompute_ref_log_probs"] for s in with_cuda)
    assert not any(s["use_liger_kernel"] for s in grid("torch", "kto", params, "cuda", False))
    assert not any(s["use_liger_kernel"] for s in grid("torch", "kto", params, "cpu", True))


def test_mlx_varies_the_split_and_checkpointing_and_keeps_compile():
    params = method_for("mlx", "sft").validate({"grad_accumulation_steps": 4,
                                                "max_seq_length": 512, "compile": False})
    plan = tune_plan(QWEN, "mlx", "sft", params, CPU_64)
    batches = {c.settings["batch_size"] for c in plan.candidates}
    assert batches <= {1, 2, 4, 8, 16} and len(batches) > 1
    assert all(c.settings["compile"] is False for c in plan.candidates)
    assert plan.baseline["batch_size"] == 4 and plan.baseline["grad_accumulation_steps"] == 4
    assert target_device("mlx", params, CPU_64) == "cpu"


def test_probe_budget_is_five_percent_capped_at_two_minutes():
    assert probe_budget(600) == 30.0
    assert probe_budget(10_000) == PROBE_MAX_S
    assert probe_budget(None) == 60.0
    short = tune_plan(QWEN, "torch", "kto", torch_kto(max_steps=30), H200, expected_s=40)
    assert short.probe_budget_s == 2.0 and short.probe_steps == 3
    # Without past runs the speed model sizes it: never above the cap.
    long = tune_plan(QWEN, "torch", "kto", torch_kto(max_steps=100_000), H200)
    assert long.probe_budget_s == PROBE_MAX_S


def test_the_larger_batch_hint_only_where_the_plan_uses_a_small_share():
    from app.planner.estimate import plan

    big = plan(QWEN, "torch", "kto", torch_kto(), H200)
    hint = larger_batch_hint(big, 16)
    assert hint and "64 instead of 16" in hint and "never does it for you" in hint
    small = {"memory_total_bytes": 16 * GiB, "memory_available_bytes": 12 * GiB,
             "cuda_devices": [], "backends": {}}
    assert larger_batch_hint(plan(QWEN, "torch", "kto", torch_kto(), small), 16) is None
    assert larger_batch_hint({"verdict": "unknown"}, 16) is None


def test_batch_knob_names_match_the_methods():
    for (backend, method), knobs in SPEED_KNOBS.items():
        spec = method_for(backend, method)
        assert all(spec.knob(k) is not None for k in knobs), (backend, method)
        assert all(k in knobs for k in BATCH_KNOBS[backend])


def test_the_speed_model_matches_the_h200_numbers_it_was_set_from():
    """Issue 14 on an H200 (Qwen2-0.5B, 512 tokens): batch 2 × 8 with checkpointing 4.2
    samples/s, batch 32 without 62.1. The model is for ordering; within 20 % here."""
    from app.planner.tune import samples_per_s

    base = {"per_device_train_batch_size": 2, "gradient_checkpointing": True}
    big = {"per_device_train_batch_size": 32, "gradient_checkpointing": False}
    slow = samples_per_s(QWEN, "torch", "kto", base, 512, "cuda")
    fast = samples_per_s(QWEN, "torch", "kto", big, 512, "cuda")
    assert abs(slow / 4.2 - 1) < 0.2 and abs(fast / 62.1 - 1) < 0.2


@pytest.mark.parametrize(("e", "first_batch", "liger"), [(16, 16, False), (64, 64, True)])
def test_liger_comes_first_only_at_the_batches_where_it_was_measured_faster(e, first_batch,
                                                                              liger):
    """H200, Qwen2-0.5B shape, 512 tokens (issue 14): at batch 16 Liger trained slower than
    plain TRL (36.2 against 39.0 samples/s), at 64 much faster (93.3 against 70.4)."""
    params = torch_kto(per_device_train_batch_size=2, gradient_accumulation_steps=e // 2,
                       max_steps=30, tune="auto")
    plan = tune_plan(QWEN, "torch", "kto", params, H200, kernels=True)
    first = plan.candidates[0].settings
    assert first["per_device_train_batch_size"] == first_batch
    assert first["gradient_checkpointing"] is False and first["use_liger_kernel"] is liger
