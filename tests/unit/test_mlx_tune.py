"""workers/mlx/tune.py: the MLX probe of ``tune: auto`` (on a tiny Llama built in memory, CPU)
and ``tuned``, which runs the shared driver (workers/tune.py) and hands back the job with the
chosen knobs."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("mlx_lm")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from contract.events import EventWriter, read_events  # noqa: E402
from contract.job_config import JobConfig  # noqa: E402
from contract.method_args import MLXKTOArgs  # noqa: E402
from contract.tune import Candidate, TunePlan, read_result, write_plan  # noqa: E402
from tests.unit.test_mlx_accumulation import adapter, kto_examples, tiny_model  # noqa: E402
from workers.runtime import StopFlag  # noqa: E402

SPLITS = [{"batch_size": 4, "grad_accumulation_steps": 2, "grad_checkpoint": False,
           "compile": False},
          {"batch_size": 2, "grad_accumulation_steps": 4, "grad_checkpoint": True,
           "compile": False}]


def test_is_oom_matches_mlx_out_of_memory_messages():
    from workers.mlx.tune import is_oom

    for message in ("[METAL] Command buffer execution failed: Insufficient Memory "
                    "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
                    "[malloc] Unable to allocate 68719476736 bytes.",
                    "[metal::malloc] Attempting to allocate 1 bytes which is greater than "
                    "the maximum allowed buffer size: out of memory"):
        assert is_oom(RuntimeError(message)), message
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("[matmul] Last dimension of first input with shape"))
    assert not is_oom(ValueError("out of memory"))  # not how MLX reports it


def test_checkpointing_puts_the_block_class_back():
    from workers.mlx.tune import checkpointing

    model = tiny_model()
    cls = type(model.layers[0])
    before = vars(cls).get("__call__")
    with checkpointing(model, True):
        assert vars(cls)["__call__"] is not before
    assert vars(cls).get("__call__") is before


def _job(tmp_path, **params) -> JobConfig:
    args = MLXKTOArgs(**{"batch_size": 8, "grad_accumulation_steps": 1, "tune": "auto",
                         "learning_rate": 1e-2, **params})
    return JobConfig(job_id=1, model="tiny", dataset=tmp_path / "rows.jsonl",
                     run_dir=tmp_path, args=args, backend="mlx", method="kto")


def test_probe_times_steps_and_leaves_the_model_as_it_was(tmp_path):
    from workers.mlx.kto import kto_probe

    model = tiny_model(0.3)
    job = _job(tmp_path)
    mx.random.seed(5)
    key, weights = np.array(mx.random.state[0]), adapter(model)
    cls_call = vars(type(model.layers[0])).get("__call__")
    probe = kto_probe(model, kto_examples(12), job.args, 0, None)
    for settings in SPLITS:
        samples_per_s, peak = probe(settings, 2)
        assert samples_per_s > 0 and peak > 0
        now = adapter(model)
        for name, value in weights.items():
            np.testing.assert_array_equal(now[name], value, err_msg=name)
        np.testing.assert_array_equal(np.array(mx.random.state[0]), key)
        assert vars(type(model.layers[0])).get("__call__") is cls_call


def test_tuned_trains_with_the_fastest_split_and_a_resume_reuses_it(tmp_path):
    from workers.mlx.kto import kto_probe
    from workers.mlx.tune import tuned

    model = tiny_model(0.3)
    job = _job(tmp_path)
    baseline = {"batch_size": 2, "grad_accumulation_steps": 4, "grad_checkpoint": True,
                "compile": False}
    write_plan(tmp_path, TunePlan(candidates=[Candidate(s) for s in SPLITS[:1]],
                                  baseline=baseline, budget_bytes=2**30, probe_steps=1,
                                  effective_batch=8))
    events = EventWriter(tmp_path / "events.jsonl")
    built = []

    def probe():
        built.append(1)
        return kto_probe(model, kto_examples(12), job.args, 0, None)

    out = tuned(job, events, StopFlag(), probe)
    saved = read_result(tmp_path)
    assert saved is not None and built == [1]
    assert {t.outcome for t in saved.tried} == {"ok"} and len(saved.tried) == 2
    best = max(saved.tried, key=lambda t: t.samples_per_s)
    assert saved.chosen == best.settings
    chosen = {k: getattr(out.args, k) for k in SPLITS[0]}
    assert chosen == best.settings
    assert out.args.batch_size * out.args.grad_accumulation_steps == 8
    rest = {k: v for k, v in dataclasses.asdict(job.args).items() if k not in SPLITS[0]}
    assert rest == {k: v for k, v in dataclasses.asdict(out.args).items() if k in rest}
    tune_events = [e for e in read_events(tmp_path / "events.jsonl")[0] if e.type == "tune"]
    assert len(tune_events) == 1 and tune_events[0].data["chosen"] == saved.chosen

    (tmp_path / "tune_plan.json").unlink()  # a resume: the saved choice, no probe
    again = tuned(job, events, StopFlag(), probe)
    assert again.args == out.args and built == [1]


def test_tuned_keeps_the_job_when_off_or_without_a_plan_or_with_another_batch(tmp_path):
    from workers.mlx.tune import tuned

    events = EventWriter(tmp_path / "events.jsonl")

    def never():
        raise AssertionError("nothing to probe")

    off = _job(tmp_path, tune="off")
    assert tuned(off, events, StopFlag(), never) is off
    auto = _job(tmp_path)
    assert tuned(auto, events, StopFlag(), never) is auto  # no plan, no saved choice
    (tmp_path / "tune.json").write_text(json.dumps(
        {"chosen": {"batch_size": 4, "grad_accumulation_steps": 4}, "tried": [],
         "message": "for another job"}))
    assert tuned(auto, events, StopFlag(), never) is auto  # 16 rows is not this job's 8
    warnings = [e.data["message"] for e in read_events(tmp_path / "events.jsonl")[0]
                if e.type == "log"]
    assert any("effective batch" in m for m in warnings)
