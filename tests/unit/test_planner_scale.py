"""The planner for a torch job on several processes (app/planner/scale.py through estimate(),
plan(), sharding_for/choose_sharding and tune_plan): per GPU on CUDA against the smallest
chosen GPU, N × one process on a CPU. Machines are injected; shapes are published ones."""

from __future__ import annotations

import pytest

from app.planner.check import DoesNotFit, choose_sharding, shape_facts
from app.planner.estimate import FITS, NO_FIT, estimate, plan, sharding_for
from app.planner.tune import tune_plan

GiB = 2**30
KTO = dict(per_device_train_batch_size=2, gradient_accumulation_steps=8, max_length=512,
           gradient_checkpointing=True)
CPU_BOX = {"memory_total_bytes": 64 * GiB, "memory_available_bytes": 48 * GiB,
           "platform": "Linux", "apple_silicon": False, "cuda_devices": [], "backends": {}}


def gpus(*free_gib: float) -> dict:
    """A Linux box with one 80 GiB GPU per entry, each with ``free_gib`` free."""
    return {"memory_total_bytes": 512 * GiB, "memory_available_bytes": 400 * GiB,
            "platform": "Linux", "apple_silicon": False, "backends": {"cuda": {"available": True}},
            "cuda_devices": [{"index": i, "name": "H100", "memory_total_bytes": 80 * GiB,
                              "memory_free_bytes": int(f * GiB)} for i, f in enumerate(free_gib)]}


def rows(est: dict) -> dict[str, int]:
    return {r["name"]: r["bytes"] for r in est["breakdown"]}


def test_ddp_holds_the_whole_job_on_each_gpu_plus_the_buckets():
    m = shape_facts("qwen2.5-7b")
    one = estimate(m, "torch", "kto", KTO, "cuda")
    ddp = estimate(m, "torch", "kto", dict(KTO, num_processes=4, distributed="ddp"), "cuda")
    lora = one["settings"]["adapter_params"]
    assert rows(ddp)["DDP buckets"] == 2 * lora * 4  # 2 × the fp32 adapter's bytes
    for name in ("weights", "adapter", "optimizer", "gradients", "activations", "logits"):
        assert rows(ddp)[name] == rows(one)[name]
    assert ddp["per_gpu"] and ddp["processes"] == 4 and ddp["sharding"] == "ddp"
    assert one["total_bytes"] < ddp["total_bytes"] < one["total_bytes"] * 1.05
    assert ddp["all_bytes"] == 4 * ddp["per_process_bytes"]


def test_fsdp_shards_weights_and_optimizer_but_not_activations():
    m = shape_facts("qwen3-14b")
    one = estimate(m, "torch", "kto", KTO, "cuda")
    fsdp = estimate(m, "torch", "kto", dict(KTO, num_processes=4, distributed="fsdp"), "cuda")
    for name in ("weights", "adapter", "optimizer", "gradients"):
        assert rows(fsdp)[name] == pytest.approx(rows(one)[name] / 4, abs=1)
    assert rows(fsdp)["activations"] == rows(one)["activations"]
    # One block's full weights gathered, the next one prefetched.
    assert rows(fsdp)["FSDP gather"] == pytest.approx(
        2 * rows(one)["weights"] / m["num_hidden_layers"], abs=1)
    assert fsdp["total_bytes"] < one["total_bytes"] / 2


def test_processes_on_a_cpu_share_its_memory():
    m = shape_facts("qwen2-0.5b")
    one = estimate(m, "torch", "kto", KTO, "cpu")
    three = estimate(m, "torch", "kto", dict(KTO, num_processes=3), "cpu")
    assert three["total_bytes"] == pytest.approx(3 * one["total_bytes"])
    assert three["per_process_bytes"] == int(one["total_bytes"]) and not three["per_gpu"]
    result = plan(m, "torch", "kto", dict(KTO, num_processes=3), CPU_BOX)
    assert result["device"] == "cpu" and result["estimate"]["sharding"] == "ddp"
    assert "3 processes × " in result["message"]
    # A box that holds one process but not three says so.
    small = dict(CPU_BOX, memory_available_bytes=int(one["total_bytes"] * 2))
    assert plan(m, "torch", "kto", KTO, small)["verdict"] == FITS
    assert plan(m, "torch", "kto", dict(KTO, num_processes=3), small)["verdict"] == NO_FIT


def test_the_budget_is_the_smallest_chosen_gpu():
    m = shape_facts("qwen2.5-7b")
    params = dict(KTO, num_processes=2, distributed="ddp")
    # The first two GPUs: the second has 12 GiB free, too little for a 7B model per GPU.
    result = plan(m, "torch", "kto", params, gpus(79, 12, 79))
    assert result["budget"]["bytes"] == 12 * GiB and result["budget"]["gpus"] == [0, 1]
    assert result["verdict"] == NO_FIT and "GPU 1 (H100) has 12.0 GiB free" in result["message"]
    assert "per GPU × 2 (ddp)" in result["message"]
    # gpu_ids picks the roomy ones.
    picked = plan(m, "torch", "kto", dict(params, gpu_ids="0,2"), gpus(79, 12, 79))
    assert picked["verdict"] == FITS and picked["budget"]["gpus"] == [0, 2]
    assert picked["budget"]["bytes"] == 79 * GiB


def test_too_few_gpus_is_refused_with_the_fix():
    m = shape_facts("qwen2-0.5b")
    result = plan(m, "torch", "kto", dict(KTO, num_processes=4), gpus(79, 79))
    assert result["verdict"] == NO_FIT and result["suggestion"] is None
    assert "num_processes 4 needs 4 GPUs and this machine has 2" in result["message"]
    assert "set num_processes to 2 or fewer" in result["message"]
    named = plan(m, "torch", "kto", dict(KTO, num_processes=2, gpu_ids="1,5"), gpus(79, 79))
    assert named["verdict"] == NO_FIT and "gpu_ids 1,5 names GPUs" in named["message"]


def test_auto_is_ddp_when_it_fits_else_fsdp():
    small, big = shape_facts("qwen2-0.5b"), shape_facts("qwen3-14b")
    params = dict(KTO, num_processes=4)  # distributed defaults to auto
    assert sharding_for(small, "torch", "kto", params, gpus(24, 24, 24, 24)) == "ddp"
    assert sharding_for(big, "torch", "kto", params, gpus(79, 79, 79, 79)) == "ddp"
    # 14B in bf16 needs about 32 GiB on one GPU: on 24 GiB GPUs only sharded.
    assert sharding_for(big, "torch", "kto", params, gpus(24, 24, 24, 24)) == "fsdp"
    result = plan(big, "torch", "kto", params, gpus(24, 24, 24, 24))
    assert result["verdict"] == FITS and result["estimate"]["sharding"] == "fsdp"
    assert "per GPU × 4 (fsdp)" in result["message"]
    # As asked, whatever fits; and processes on a CPU are never sharded by auto.
    assert sharding_for(small, "torch", "kto", dict(params, distributed="fsdp"),
                        gpus(79, 79, 79, 79)) == "fsdp"
    assert sharding_for(big, "torch", "kto", params, CPU_BOX) == "ddp"


def test_choose_sharding_refuses_when_neither_fits(tmp_path):
    params = dict(KTO, num_processes=2)
    model = str(tmp_path / "no-such-model")  # nothing to read: never planned, ddp
    assert choose_sharding(model, "torch", "kto", params, gpus(1, 1)) == "ddp"
    preset = "mistralai/Mistral-7B-Instruct-v0.3"  # planned from its published shape
    assert choose_sharding(preset, "torch", "kto", params, gpus(79, 79)) == "ddp"
    assert choose_sharding(preset, "torch", "kto", params, gpus(12, 12)) == "fsdp"
    with pytest.raises(DoesNotFit) as info:
        choose_sharding(preset, "torch", "kto", params, gpus(3, 3))
    assert info.value.result["verdict"] == NO_FIT
    assert "per GPU × 2 (fsdp)" in str(info.value)


def test_explicit_ddp_that_does_not_fit_is_pointed_at_fsdp():
    result = plan(shape_facts("qwen3-14b"), "torch", "kto",
                  dict(KTO, num_processes=4, distributed="ddp"), gpus(24, 24, 24, 24))
    assert result["verdict"] == NO_FIT
    s = result["suggestion"]
    assert s["text"].startswith("set distributed to fsdp") and s["params"]["distributed"] == "fsdp"
    assert "per GPU × 4 (fsdp)" in result["advice"]


def test_auto_keeps_auto_in_a_suggestion():
    # Neither sharding fits batch 8 without checkpointing on 10 GiB GPUs; a suggestion that
    # does keeps distributed auto, so the launch decides again with the new settings.
    params = dict(KTO, num_processes=2, per_device_train_batch_size=8, max_length=2048,
                  gradient_checkpointing=False)
    result = plan(shape_facts("qwen2.5-3b"), "torch", "kto", params, gpus(10, 10))
    assert result["verdict"] == NO_FIT and result["suggestion"] is not None
    assert result["suggestion"]["params"].get("distributed", "auto") == "auto"


def test_tune_plans_per_gpu_and_keeps_the_batch_over_all_processes():
    m = shape_facts("qwen2.5-7b")
    params = dict(KTO, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                  num_processes=2, distributed="ddp", tune="auto", num_train_epochs=1)
    one = tune_plan(m, "torch", "kto", {**params, "num_processes": 1}, gpus(40))
    two = tune_plan(m, "torch", "kto", params, gpus(40, 40))
    assert one is not None and two is not None
    assert two.effective_batch == 2 * 16 and one.effective_batch == 16
    for c in two.candidates:  # per device × accumulation stays 16; N is fixed
        assert c.settings["per_device_train_batch_size"] * \
            c.settings["gradient_accumulation_steps"] == 16
        per_gpu = estimate(m, "torch", "kto", {**params, **c.settings}, "cuda")
        assert c.estimate_bytes == int(per_gpu["total_bytes"]) and per_gpu["per_gpu"]
    # Pruned by the smallest GPU: a 24 GiB second GPU leaves fewer settings than two roomy ones.
    tight = tune_plan(m, "torch", "kto", params, gpus(40, 24))
    assert tight is not None and tight.budget_bytes == 24 * GiB
    biggest = max(c.settings["per_device_train_batch_size"] for c in two.candidates)
    assert max(c.settings["per_device_train_batch_size"] for c in tight.candidates) < biggest
    assert tune_plan(m, "torch", "kto", params, gpus(40, 20)) is None  # nothing fits 20 GiB


def test_tune_on_cpu_processes_counts_every_process():
    m = shape_facts("qwen2-0.5b")
    params = dict(KTO, num_processes=2, tune="auto", num_train_epochs=1)
    plan2 = tune_plan(m, "torch", "kto", params, CPU_BOX)
    assert plan2 is not None
    for c in plan2.candidates:
        one = estimate(m, "torch", "kto", {**params, **c.settings, "num_processes": 1}, "cpu")
        assert c.estimate_bytes == pytest.approx(2 * one["total_bytes"], abs=2)


def test_the_plan_panel_says_per_gpu():
    from app.web.templating import templates

    result = plan(shape_facts("qwen3-14b"), "torch", "kto", dict(KTO, num_processes=4),
                  gpus(24, 24, 24, 24))
    html = templates.env.get_template("_plan.html").render(plan=result, request=None)
    assert '<span data-testid="plan-per-gpu">per GPU × 4 (fsdp)</span>' in html
    assert "Each row is what one GPU holds" in html and "in all" in html
    assert "per GPU of 24.0 GiB</a>" in html  # the chip at the top of the form
