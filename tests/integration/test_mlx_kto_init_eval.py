"""MLX KTO from an initial adapter (``init_adapter``) and with a held-out split
(``eval_fraction``), the real worker on the tiny demo model.

From an adapter, the reference is that adapter, frozen: before the first update the policy is
the reference, so the first step's rewards and KL are 0, though its log-probs are the
adapter's, not the bare base's (a fresh LoRA's). That holds compiled and eager (with gradient
checkpointing), and a resumed run keeps the initial adapter as its reference, not the
checkpoint's weights: it reports what the uninterrupted run reports. The held-out rows are
recorded in the run and evaluated every ``steps_per_eval`` steps and at the end, with TRL's
``eval_`` names and numbers (TRL's evaluate on the same adapter and rows). Folders that are
no MLX adapter, or do not fit, and splits too small fail with a hint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from contract.eval_split import EVAL_SPLIT_FILE, read_split, split_rows  # noqa: E402
from contract.events import LOG_FILE  # noqa: E402
from contract.rows import load_kto_dataset  # noqa: E402
from tests.helpers.mlx_adapters import SHAPE, make_mlx_adapter, make_peft_folder  # noqa: E402
from tests.helpers.workers import of_type, run_mlx, write_mlx_config  # noqa: E402

FRACTION = 0.12  # 21 + 17 of the demo's 176 + 144 rows: 38, the last eval batch holds 2
RUN = {"iters": 4, "batch_size": 4, "learning_rate": 1e-3, "steps_per_report": 1,
       "steps_per_save": 2, "eval_fraction": FRACTION, "steps_per_eval": 3}
EVAL_NAMES = {"eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/rejected",
              "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected"}
ZERO = 1e-5


@pytest.fixture(scope="module")
def adapter(demo, tmp_path_factory) -> Path:
    return make_mlx_adapter(demo["model"], tmp_path_factory.mktemp("init") / "adapter",
                            b_std=0.1)


def _run(run_dir: Path, demo, **params):
    write_mlx_config(run_dir, demo, "kto", {**RUN, **params.pop("knobs", {})}, **params)
    rc, events = run_mlx(run_dir, timeout=300)
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    assert events[-1].data["status"] == "succeeded"
    return events


def _train(events) -> dict[int, dict]:
    return {m["step"]: m["values"] for m in of_type(events, "metric") if "loss" in m["values"]}


def _evals(events) -> dict[int, dict]:
    return {m["step"]: m["values"] for m in of_type(events, "metric")
            if "eval_loss" in m["values"]}


@pytest.fixture(scope="module")
def from_adapter(demo, adapter, tmp_path_factory):
    """Compiled, from the adapter: (run_dir, events)."""
    run_dir = tmp_path_factory.mktemp("from-adapter")
    return run_dir, _run(run_dir, demo, knobs={"init_adapter": str(adapter)})


@pytest.fixture(scope="module")
def fresh(demo, tmp_path_factory):
    """The same run from a fresh LoRA: (run_dir, events)."""
    run_dir = tmp_path_factory.mktemp("fresh")
    return run_dir, _run(run_dir, demo)


def _assert_reference_is_the_policy(values: dict) -> None:
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"):
        assert abs(values[name]) < ZERO, (name, values)
    assert values["loss"] == pytest.approx(0.5, abs=ZERO)  # 1 - σ(0), both weights 1


@pytest.mark.slow
def test_the_initial_adapter_is_the_reference(from_adapter, fresh, adapter):
    run_dir, events = from_adapter
    first = _train(events)[1]  # measured before the first update
    _assert_reference_is_the_policy(first)
    fresh_first = _train(fresh[1])[1]
    _assert_reference_is_the_policy(fresh_first)  # the bare base is a fresh LoRA's reference
    # The same batch, another policy: the adapter's log-probs are not the bare base's.
    for side in ("chosen", "rejected"):
        assert abs(first[f"logps/{side}"] - fresh_first[f"logps/{side}"]) > 0.1, side
    later = _train(events)
    assert max(abs(later[s].get(f"rewards/{side}", 0)) for s in (2, 3, 4)
               for side in ("chosen", "rejected")) > 1e-3  # it moved from there

    logs = [e["message"] for e in of_type(events, "log")]
    assert any("its shape replaces the knobs" in line and str(adapter) in line
               for line in logs), logs
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["num_layers"] == SHAPE["num_layers"] and config["fine_tune_type"] == "lora"
    assert config["lora_parameters"] == {k: SHAPE[k] for k in ("rank", "scale", "dropout")}
    assert config["prospect"]["init_adapter"] == str(adapter)
    summary = events[-1].data["summary"]
    assert summary["lora_layers"] == 1
    fresh_summary = fresh[1][-1].data["summary"]  # 2 blocks, rank 8: 4 times the parameters
    assert summary["trainable_params"] * 4 == fresh_summary["trainable_params"]

    import mlx.core as mx

    saved = mx.load(str(run_dir / "adapter" / "adapters.safetensors"))
    initial = mx.load(str(adapter / "adapters.safetensors"))
    assert saved.keys() == initial.keys()  # the adapter's layers, trained and saved
    assert max(mx.abs(saved[k] - initial[k]).max().item() for k in saved) > 0


@pytest.mark.slow
def test_eager_with_grad_checkpoint_starts_at_the_adapter_too(demo, adapter, from_adapter,
                                                             tmp_path):
    events = _run(tmp_path, demo, knobs={"init_adapter": str(adapter), "compile": False,
                                         "grad_checkpoint": True, "iters": 2})
    train = _train(events)
    _assert_reference_is_the_policy(train[1])
    compiled = _train(from_adapter[1])
    for step in (1, 2):  # the compiled run's, step after step (the same batches)
        assert train[step].keys() == compiled[step].keys()
        for name, value in compiled[step].items():
            if "/" in name or name in ("loss", "kl"):
                assert train[step][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (step,
                                                                                       name)
    assert sorted(_evals(events)) == [2]  # the end of the run is not a multiple of 3


@pytest.mark.slow
def test_a_resumed_run_keeps_the_initial_adapter_as_its_reference(demo, adapter, from_adapter,
                                                                   tmp_path):
    run_dir, whole = from_adapter
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    events = _run(tmp_path, demo, knobs={"init_adapter": str(adapter)},
                  resume_from_checkpoint=str(checkpoint))
    assert [p["step"] for p in of_type(events, "progress")] == [3, 4]
    before, after = _train(whole), _train(events)
    assert sorted(after) == [3, 4]
    # Had the checkpoint become the reference, step 3's rewards would be 0.
    assert min(abs(before[3]["rewards/chosen"]), abs(before[3]["rewards/rejected"])) > 1e-3
    assert abs(_evals(whole)[3]["eval_rewards/chosen"]) > 1e-3
    for step in (3, 4):
        for name, value in before[step].items():
            if "/" in name or name in ("loss", "kl"):
                assert after[step][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (step,
                                                                                        name)
    for step in (3, 4):  # and the held-out evaluation as well
        assert _evals(events)[step] == pytest.approx(_evals(whole)[step], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_held_out_rows_are_recorded_and_evaluated(demo, fresh):
    run_dir, events = fresh
    rows = load_kto_dataset(demo["dataset"])
    _, held, indices = split_rows(rows, FRACTION, seed=0)
    recorded = read_split(run_dir)
    assert [r["index"] for r in recorded] == indices and len(indices) == 38
    assert [{k: v for k, v in r.items() if k != "index"} for r in recorded] == held
    logs = [e["message"] for e in of_type(events, "log")]
    assert any(EVAL_SPLIT_FILE in line and "held out 38 of 320" in line for line in logs)

    evals = _evals(events)
    assert sorted(evals) == [3, 4]  # every steps_per_eval, and once at the end
    for values in evals.values():
        assert set(values) == EVAL_NAMES
    assert evals[3] != evals[4]  # the policy moved between them
    assert sorted(_train(events)) == [1, 2, 3, 4]
    assert events[-1].data["summary"]["eval_loss"] == evals[4]["eval_loss"]
    assert sum(e.data.get("values", {}).get("eval_loss") is not None
               for e in events if e.type == "metric") == 2


@pytest.mark.slow
def test_no_eval_split_no_eval(demo, tmp_path):
    """A run that holds nothing out (the default) reports no eval_ metrics and no eval_loss."""
    events = _run(tmp_path, demo, knobs={"eval_fraction": 0.0, "iters": 1, "compile": False})
    assert not _evals(events) and not (tmp_path / EVAL_SPLIT_FILE).exists()
    assert "eval_loss" not in events[-1].data["summary"]


def _failure(run_dir: Path, demo, **params) -> dict:
    write_mlx_config(run_dir, demo, "kto", {**RUN, **params.pop("knobs", {})}, **params)
    rc, events = run_mlx(run_dir, timeout=300)
    assert rc == 1, (run_dir / LOG_FILE).read_text()[-3000:]
    assert events[-1].data["status"] == "failed"
    return of_type(events, "error")[0]


@pytest.mark.slow
def test_a_split_too_small_fails_with_a_hint(demo, tmp_path):
    rows = [json.loads(line) for line in Path(demo["dataset"]).read_text().splitlines()]
    small = tmp_path / "small.jsonl"
    picked = [r for r in rows if r["label"]][:3] + [r for r in rows if not r["label"]][:1]
    small.write_text("".join(json.dumps(r) + "\n" for r in picked))
    error = _failure(tmp_path / "run", demo, knobs={"eval_fraction": 0.1},
                     dataset=str(small))
    assert "eval_fraction 0.1 of 4 rows holds out 1" in error["message"], error
    assert "eval_fraction" in error["hint"], error


@pytest.mark.slow
def test_folders_that_are_no_mlx_adapter_fail_with_a_hint(demo, adapter, tmp_path):
    error = _failure(tmp_path / "peft", demo,
                     knobs={"init_adapter": str(make_peft_folder(tmp_path / "peft-adapter"))})
    assert error["error_type"] == "init_adapter", error
    assert "PEFT (torch) adapter" in error["message"] and "MLX" in error["message"]
    assert "torch backend" in error["hint"]

    error = _failure(tmp_path / "missing", demo,
                     knobs={"init_adapter": str(tmp_path / "nowhere")})
    assert error["error_type"] == "init_adapter" and "nowhere" in error["message"]
    assert "leave it empty for a fresh LoRA" in error["hint"]

    other = tmp_path / "other-shape"  # as an adapter of another model: shapes differ
    shutil.copytree(adapter, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 8
    config["model"] = "some-other-model"
    (other / "adapter_config.json").write_text(json.dumps(config))
    error = _failure(tmp_path / "unfit", demo, knobs={"init_adapter": str(other)})
    assert error["error_type"] == "init_adapter", error
    assert f"{other} does not fit" in error["message"] and "shape" in error["message"]
    assert "some-other-model" in error["hint"] and "trained on" in error["hint"]


@pytest.mark.slow
def test_the_evaluation_matches_trls(demo, fresh, tmp_path):
    """The last evaluation (the saved adapter on the recorded held-out rows) against TRL's
    KTOTrainer.evaluate on torch, the same LoRA weights in a PEFT adapter: the same numbers,
    TRL's reductions over batches of 4 (the last one of 2)."""
    pytest.importorskip("trl")
    import datasets
    import mlx.core as mx
    import numpy as np
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from workers.torch.kto import checkpointing

    run_dir, events = fresh
    held = [{k: v for k, v in r.items() if k != "index"} for r in read_split(run_dir)]
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    rank, scale = config["lora_parameters"]["rank"], config["lora_parameters"]["scale"]
    datasets.disable_progress_bars()
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=RUN["batch_size"],
        per_device_eval_batch_size=RUN["batch_size"], max_length=512, beta=0.1, bf16=False,
        use_cpu=True, report_to=[], disable_tqdm=True, **checkpointing(False))
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(demo["model"], dtype=torch.float32),
        args=args, train_dataset=datasets.Dataset.from_list(held),
        eval_dataset=datasets.Dataset.from_list(held),
        processing_class=AutoTokenizer.from_pretrained(demo["model"]),
        peft_config=LoraConfig(r=rank, lora_alpha=scale * rank, lora_dropout=0.0,
                               target_modules="all-linear", task_type="CAUSAL_LM"))
    saved = mx.load(str(run_dir / "adapter" / "adapters.safetensors"))
    params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():  # model.layers.0.self_attn.q_proj.lora_a
            module, leaf = name.rsplit(".", 1)
            theirs = params[f"base_model.model.{module}.lora_{leaf[-1].upper()}.default.weight"]
            theirs.copy_(torch.from_numpy(np.array(value).T.copy()))
    assert len(saved) == 7 * 2 * 2
    theirs = trainer.evaluate()
    ours = _evals(events)[RUN["iters"]]
    for name in sorted(EVAL_NAMES):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-5, abs=1e-5), (name, ours,
                                                                              theirs)
    print(f"\nTRL {theirs}\nMLX {ours}")
