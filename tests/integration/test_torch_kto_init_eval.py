"""The torch KTO worker starting from an adapter (init_adapter) and evaluating on a held-out
split (eval_fraction), run for real as the server runs it, on the tiny demo model (CPU).

The reference of an init_adapter run is the starting adapter, frozen (TRL's "ref" copy): at
step 1, before any update, the policy and the reference agree, so rewards and KL are 0. The
same adapter moves the log-probs away from the bare base's (a fresh LoRA run's), which is
what would make those rewards non-zero if the reference were the base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract.eval_split import EVAL_SPLIT_FILE, split_indices
from contract.events import LOG_FILE
from contract.knobs import TORCH_KTO
from contract.rows import load_kto_dataset
from tests.helpers.adapters import build_lora_adapter
from tests.helpers.workers import FAST, of_type, run_torch, write_torch_config

pytestmark = pytest.mark.slow

# 3 steps of 4 rows, an evaluation every 2 (and a last one at 3), a checkpoint at 2.
SHORT = {**FAST, "max_steps": 3, "save_steps": 2, "per_device_train_batch_size": 4,
         "max_length": 64, "eval_fraction": 0.25, "eval_steps": 2}
ZERO = 1e-5  # the policy and its reference compute the same numbers before any update


def _rows(path: Path, n_each: int) -> list[dict]:
    """The first ``n_each`` desirable and undesirable demo rows, alternating."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    good = [r for r in rows if r["label"]][:n_each]
    bad = [r for r in rows if not r["label"]][:n_each]
    return [r for pair in zip(good, bad, strict=True) for r in pair]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def small(demo, tmp_path_factory) -> dict[str, Path]:
    """The demo model, 24 alternating demo rows, and a LoRA adapter with random weights."""
    folder = tmp_path_factory.mktemp("kto-init-data")
    dataset = _write_rows(folder / "small.jsonl", _rows(demo["dataset"], 12))
    adapter = build_lora_adapter(demo["model"], folder / "start-adapter", scale=0.2)
    return {"model": demo["model"], "dataset": dataset, "adapter": adapter}


def _run(run_dir: Path, small, **params) -> tuple[int, list]:
    write_torch_config(run_dir, small, params=TORCH_KTO.validate({**SHORT, **params}))
    rc, events = run_torch(run_dir)
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    return rc, events


@pytest.fixture(scope="module")
def init_run(small, tmp_path_factory):
    """From the adapter, with the reference log-probs precomputed (TRL's other path)."""
    run_dir = tmp_path_factory.mktemp("kto-init-run")
    _, events = _run(run_dir, small, init_adapter=str(small["adapter"]),
                     precompute_ref_log_probs=True)
    return run_dir, events


@pytest.fixture(scope="module")
def fresh_run(small, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("kto-fresh-run")
    _, events = _run(run_dir, small)
    return run_dir, events


def _train_metrics(events) -> dict[int, dict]:
    return {m["step"]: m["values"] for m in of_type(events, "metric") if "loss" in m["values"]}


def _eval_metrics(events) -> dict[int, dict]:
    return {m["step"]: m["values"] for m in of_type(events, "metric")
            if "eval_loss" in m["values"]}


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_init_adapter_is_the_reference(init_run, fresh_run, small):
    _, events = init_run
    first = _train_metrics(events)[1]  # logging_first_step: computed before any update
    assert {"rewards/chosen", "rewards/rejected", "kl"} <= set(first)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"):
        assert abs(first[name]) < ZERO, (name, first[name])
    (line,) = [e["message"] for e in of_type(events, "log") if "starting from" in e["message"]]
    assert str(small["adapter"]) in line and "are ignored" in line

    # The test can fail: the same batch on the bare base (a fresh LoRA) has other log-probs,
    # so a reference without the adapter would give rewards far from 0.
    fresh = _train_metrics(fresh_run[1])[1]
    for name in ("logps/chosen", "logps/rejected"):
        assert abs(first[name] - fresh[name]) > 1000 * ZERO, (name, first[name], fresh[name])


def test_fresh_lora_keeps_todays_behaviour(fresh_run, small):
    run_dir, events = fresh_run
    first = _train_metrics(events)[1]
    for name in ("rewards/chosen", "rewards/rejected", "kl"):
        assert abs(first[name]) < ZERO, (name, first[name])
    assert not [e for e in of_type(events, "log") if "starting from" in e["message"]]
    adapter = run_dir / "adapter"
    assert of_type(events, "artifact") == [{"kind": "adapter", "path": str(adapter)}]
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "ref").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == TORCH_KTO.defaults()["r"]  # the knobs' LoRA
    assert not (run_dir / "checkpoints" / "checkpoint-2" / "ref").exists()


def test_eval_split_and_eval_metrics(fresh_run, small):
    run_dir, events = fresh_run
    rows = load_kto_dataset(small["dataset"])
    indices = split_indices([r["label"] for r in rows], 0.25, TORCH_KTO.defaults()["seed"])
    held = [json.loads(line) for line in (run_dir / EVAL_SPLIT_FILE).read_text().splitlines()]
    assert [h["index"] for h in held] == indices and len(held) == 6
    assert all({k: v for k, v in h.items() if k != "index"} == rows[h["index"]] for h in held)
    assert any("held out 6 of 24 rows" in e["message"] for e in of_type(events, "log"))

    evals = _eval_metrics(events)
    assert sorted(evals) == [2, 3]  # every eval_steps, and once more at the end
    for values in evals.values():
        assert {"eval_loss", "eval_rewards/chosen", "eval_rewards/rejected",
                "eval_rewards/margins", "eval_kl", "eval_logps/chosen"} <= set(values)
        assert not any(k.endswith(("_runtime", "_per_second")) for k in values)
        assert not [k for k in values if not k.startswith("eval_") and k != "epoch"]
    summary = events[-1].data["summary"]
    assert events[-1].data["status"] == "succeeded"
    assert summary["eval_loss"] == evals[3]["eval_loss"]
    assert summary["final_loss"] == _train_metrics(events)[3]["loss"]


def test_too_small_split_fails_with_the_fix(small, tmp_path):
    rows = _rows(small["dataset"], 2)[:3]  # 2 desirable, 1 undesirable: 1 held out
    dataset = _write_rows(tmp_path / "three.jsonl", rows)
    write_torch_config(tmp_path / "run", {**small, "dataset": dataset},
                       params=TORCH_KTO.validate(SHORT))
    rc, events = run_torch(tmp_path / "run")
    assert rc == 1
    (error,) = of_type(events, "error")
    assert "KTO needs at least 2 on each side" in error["message"]
    assert "raise eval_fraction, add rows, or set eval_fraction to 0" in error["hint"]
    assert events[-1].data["status"] == "failed"
    assert not of_type(events, "progress")


def test_init_result_is_the_policy_alone(init_run, small):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, events = init_run
    adapter = run_dir / "adapter"
    assert of_type(events, "artifact") == [{"kind": "adapter", "path": str(adapter)}]
    assert not (adapter / "ref").exists()
    saved, start = _adapter_tensors(adapter), _adapter_tensors(small["adapter"])
    assert set(saved) == set(start) and not [k for k in saved if ".ref." in k]
    assert any(not torch.equal(saved[k], start[k]) for k in saved)  # it trained

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small["model"]),
                                      adapter)
    assert list(model.peft_config) == ["default"]
    assert not [n for n, _ in model.named_parameters() if ".ref." in n]

    # A checkpoint holds the frozen reference too: a resume gets the same one back.
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    ref = _adapter_tensors(checkpoint / "ref")
    assert all(torch.equal(ref[k], start[k]) for k in start)


def test_resume_of_an_init_run_keeps_its_reference(init_run, small, tmp_path):
    run_dir, events = init_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    checkpoint = copy / "checkpoints" / "checkpoint-2"
    # Without precompute this time: both of TRL's reference paths must agree.
    write_torch_config(copy, small, params=TORCH_KTO.validate(
        {**SHORT, "init_adapter": str(small["adapter"])}), resume_from_checkpoint=str(checkpoint))
    rc, resumed = run_torch(copy)
    assert rc == 0, (copy / LOG_FILE).read_text()[-3000:]
    resumed = resumed[len(events):]
    assert resumed[-1].data["status"] == "succeeded"
    # Step 3 again, from the step-2 policy against the same reference: the same numbers.
    before, after = _train_metrics(events)[3], _train_metrics(resumed)[3]
    for name in ("loss", "rewards/chosen", "rewards/rejected", "kl", "logps/chosen"):
        if name in before:
            assert after[name] == pytest.approx(before[name], abs=1e-4), name
    start = _adapter_tensors(small["adapter"])
    ref = _adapter_tensors(copy / "checkpoints" / "checkpoint-3" / "ref")
    import torch

    assert all(torch.equal(ref[k], start[k]) for k in start)
    assert not (copy / "adapter" / "ref").exists()


def test_a_folder_that_is_no_adapter_or_does_not_fit(small, tmp_path):
    from transformers import AutoModelForCausalLM

    from workers.torch.errors import InitAdapterError, describe_error
    from workers.torch.kto import load_init_adapter

    def load(folder):
        base = AutoModelForCausalLM.from_pretrained(small["model"])
        with pytest.raises(InitAdapterError) as caught:
            load_init_adapter(base, folder, "tiny-demo")
        return describe_error(caught.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    error = load(empty)
    assert error["error_type"] == "init_adapter"
    assert f"init_adapter {empty} holds no PEFT adapter" in error["message"]
    assert "leave init_adapter empty for a fresh LoRA" in error["hint"]
    assert "is not a folder" in load(tmp_path / "missing")["message"]

    wrong = tmp_path / "wrong-rank"  # weights of rank 4 under a config that says 8
    shutil.copytree(small["adapter"], wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    error = load(wrong)
    assert f"init_adapter {wrong} does not fit tiny-demo" in error["message"]
    assert "size mismatch" in error["message"]
    assert "trained on this same base model" in error["hint"]
