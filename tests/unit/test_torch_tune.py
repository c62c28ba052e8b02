"""Auto-tuning's worker side: the shared driver (workers/tune.py: budget, out-of-memory,
skipped settings, the saved choice, the message) and the torch probe (workers/torch/tune.py)
on the real tiny demo model, which it must leave as it found it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from contract.events import EVENTS_FILE, EventWriter, read_events
from contract.job_config import JobConfig
from contract.knobs import TORCH_KTO
from contract.method_args import TorchKTOArgs
from contract.rows import load_kto_dataset
from contract.tune import RESULT_FILE, Candidate, Trial, TunePlan, TuneResult, read_result
from workers.tune import SkipSetting, autotune, describe, label

GIB = 2**30


def torch_setting(batch: int, accum: int, ckpt: bool, pre: bool = False,
                  liger: bool = False) -> dict:
    return {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
            "gradient_checkpointing": ckpt, "precompute_ref_log_probs": pre,
            "use_liger_kernel": liger}


BASELINE = torch_setting(2, 8, True)


def plan_of(*settings: dict, budget_s: float = 60.0, estimates=None) -> TunePlan:
    estimates = estimates or [0] * len(settings)
    return TunePlan(candidates=[Candidate(s, e) for s, e in zip(settings, estimates, strict=True)],
                    baseline=BASELINE, budget_bytes=100 * GIB, device_total_bytes=139 * GIB,
                    probe_budget_s=budget_s, probe_steps=3, effective_batch=16)


def events_in(run_dir: Path) -> list:
    events, _ = read_events(run_dir / EVENTS_FILE)
    return events


# --- the message ----------------------------------------------------------------------------
def test_label_reads_both_backends_settings():
    assert label(torch_setting(16, 1, False)) == "batch 16 × 1, no checkpointing"
    assert label(torch_setting(4, 4, True, pre=True)) == \
        "batch 4 × 4, checkpointing, precomputed reference"
    assert label(torch_setting(8, 2, False, liger=True)) == \
        "batch 8 × 2, no checkpointing, Liger kernels"
    assert label({"batch_size": 4, "grad_accumulation_steps": 2, "grad_checkpoint": True,
                  "compile": False}) == "batch 4 × 2, checkpointing, not compiled"
    assert label({}) == "as given"


def test_describe_names_each_trial_the_choice_the_ratio_and_the_memory():
    chosen = torch_setting(16, 1, False)
    result = TuneResult(chosen=chosen, baseline_samples_per_s=4.0, tried=[
        Trial(chosen, "ok", samples_per_s=31.6, peak_bytes=31 * GIB),
        Trial(torch_setting(32, 1, False), "oom", note="OutOfMemoryError: CUDA"),
        Trial(torch_setting(8, 2, False, liger=True), "skipped", note="not installed"),
        Trial(BASELINE, "ok", samples_per_s=4.0, peak_bytes=GIB + GIB // 5),
    ])
    assert describe(result, plan_of(chosen)) == (
        "tried 3 settings (1 skipped): batch 16 × 1, no checkpointing 31.6/s; "
        "batch 32 × 1, no checkpointing out of memory; "
        "batch 8 × 2, no checkpointing, Liger kernels skipped; "
        "batch 2 × 8, checkpointing 4/s; "
        "chose batch 16 × 1, no checkpointing: 7.9× the seed defaults, 31 GiB of 139")


def test_describe_when_the_seed_defaults_win_and_on_a_small_machine():
    plan = dataclasses.replace(plan_of(torch_setting(4, 4, False)),
                               device_total_bytes=0)
    result = TuneResult(chosen=BASELINE, baseline_samples_per_s=5.0, tried=[
        Trial(torch_setting(4, 4, False), "ok", samples_per_s=4.5, peak_bytes=600 << 20),
        Trial(BASELINE, "ok", samples_per_s=5.0, peak_bytes=500 << 20)])
    assert describe(result, plan).endswith(
        "chose batch 2 × 8, checkpointing: the seed defaults were the fastest, 500 MiB")


# --- the driver -----------------------------------------------------------------------------
class Probe:
    """A stand-in for a backend's probe whose speeds, failures and calls are set by the test:
    the driver, not the probe, is what these tests exercise."""

    def __init__(self, speeds: dict[int, float], oom: set[int] = frozenset(),
                 skip: set[int] = frozenset()):
        self.speeds, self.oom, self.skip = speeds, oom, skip
        self.calls: list[tuple[dict, int]] = []

    def __call__(self, settings: dict, steps: int) -> tuple[float, int]:
        self.calls.append((settings, steps))
        batch = settings["per_device_train_batch_size"]
        if batch in self.oom:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if batch in self.skip:
            raise SkipSetting("the kernel is not installed")
        return self.speeds[batch], batch * GIB


def test_an_out_of_memory_setting_is_recorded_and_the_next_tried(tmp_path):
    from workers.torch.tune import is_oom

    plan = plan_of(torch_setting(32, 1, False), torch_setting(64, 1, False),
                   torch_setting(16, 1, False), torch_setting(8, 2, False, liger=True),
                   estimates=[30 * GIB, 60 * GIB, 15 * GIB, 8 * GIB])
    probe = Probe({16: 30.0, 8: 99.0, 2: 4.0}, oom={32}, skip={8})
    events = EventWriter(tmp_path / EVENTS_FILE)
    result = autotune(plan, probe, events, lambda: False, is_oom, tmp_path)
    events.close()

    outcomes = [(t.settings["per_device_train_batch_size"], t.outcome) for t in result.tried]
    assert outcomes == [(32, "oom"), (64, "skipped"), (16, "ok"), (8, "skipped"), (2, "ok")]
    assert "OutOfMemoryError" in result.tried[0].note
    assert "more memory than a setting that ran out" in result.tried[1].note
    assert result.tried[3].note == "the kernel is not installed"
    assert [c[0]["per_device_train_batch_size"] for c in probe.calls] == [32, 16, 8, 2]
    assert all(steps == 3 for _, steps in probe.calls)
    assert result.chosen == torch_setting(16, 1, False)
    assert result.baseline_samples_per_s == 4.0
    assert "7.5× the seed defaults" in result.message

    saved = read_result(tmp_path)
    assert saved is not None and saved.chosen == result.chosen
    got = [e for e in events_in(tmp_path) if e.type in ("status", "tune")]
    assert [e.data["message"] for e in got if e.type == "status"] == [
        "timing setting 1 of 5: batch 32 × 1, no checkpointing",
        "timing setting 3 of 5: batch 16 × 1, no checkpointing",
        "timing setting 4 of 5: batch 8 × 2, no checkpointing, Liger kernels",
        "timing setting 5 of 5: batch 2 × 8, checkpointing"]
    assert got[-1].type == "tune" and got[-1].data["chosen"] == result.chosen
    assert got[-1].data["message"] == result.message


def test_a_saved_choice_is_reused_without_probing(tmp_path):
    plan = plan_of(torch_setting(16, 1, False))
    first = autotune(plan, Probe({16: 30.0, 2: 4.0}), EventWriter(tmp_path / EVENTS_FILE),
                     lambda: False, lambda e: False, tmp_path)
    probe = Probe({16: 1.0, 2: 99.0})
    again = autotune(plan, probe, EventWriter(tmp_path / "again.jsonl"), lambda: False,
                     lambda e: False, tmp_path)
    assert probe.calls == [] and again.chosen == first.chosen == torch_setting(16, 1, False)
    assert json.loads((tmp_path / RESULT_FILE).read_text())["message"] == first.message


def test_a_job_too_short_to_time_takes_the_plans_first_setting_untimed(tmp_path):
    plan = plan_of(torch_setting(16, 1, False), torch_setting(8, 2, False), budget_s=9.9)
    probe = Probe({16: 30.0, 8: 50.0, 2: 4.0})
    result = autotune(plan, probe, EventWriter(tmp_path / EVENTS_FILE), lambda: False,
                      lambda e: False, tmp_path)
    assert probe.calls == [] and result.chosen == torch_setting(16, 1, False)
    assert [t.outcome for t in result.tried] == ["planned"]
    assert result.message.startswith("chose batch 16 × 1, no checkpointing from the memory plan")
    assert "9.9 s of probe budget" in result.message
    events = [json.loads(line) for line in (tmp_path / EVENTS_FILE).read_text().splitlines()]
    assert [e["type"] for e in events] == ["tune"]
    assert json.loads((tmp_path / RESULT_FILE).read_text())["chosen"] == result.chosen


def test_the_budget_stops_probing_after_the_first_setting_seed_defaults_included(tmp_path):
    plan = plan_of(torch_setting(16, 1, False), torch_setting(8, 2, False), budget_s=0.0)
    plan.min_timed_s = 0.0  # PROSPECT_TUNE_MIN_PROBE_S=0: time even with no budget
    probe = Probe({16: 30.0, 8: 50.0, 2: 4.0})
    result = autotune(plan, probe, EventWriter(tmp_path / EVENTS_FILE), lambda: False,
                      lambda e: False, tmp_path)
    assert [t.outcome for t in result.tried] == ["ok", "skipped", "skipped"]
    assert {t.note for t in result.tried[1:]} == {"probe time used up"}
    assert len(probe.calls) == 1 and result.chosen == torch_setting(16, 1, False)
    assert result.baseline_samples_per_s is None
    assert result.message.endswith("chose batch 16 × 1, no checkpointing: 16 GiB of 139")


def test_nothing_measured_gives_none_and_writes_nothing(tmp_path):
    plan = plan_of(torch_setting(16, 1, False))
    assert autotune(plan, Probe({}, oom={16, 2}), EventWriter(tmp_path / EVENTS_FILE),
                    lambda: False, lambda e: True, tmp_path) is None
    assert autotune(plan, Probe({16: 1.0, 2: 1.0}), EventWriter(tmp_path / EVENTS_FILE),
                    lambda: True, lambda e: True, tmp_path) is None  # a stop came first
    assert not (tmp_path / RESULT_FILE).exists()


def test_is_oom_knows_cuda_mps_and_system_memory_and_nothing_else():
    from workers.torch.tune import is_oom

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory."))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of range"))


def test_liger_is_refused_by_hand_and_skipped_by_the_tuner_off_cuda():
    from workers.runtime import HintedError
    from workers.torch.tune import check_liger, liger_problem

    assert "CUDA only" in liger_problem("cpu") and "CUDA only" in liger_problem("mps")
    args = TorchKTOArgs(**TORCH_KTO.validate({"use_liger_kernel": True}))
    with pytest.raises(HintedError, match="use_liger_kernel is on, but Liger's kernels run on "
                       "CUDA only") as err:
        check_liger(args, "cpu")
    assert "Turn use_liger_kernel off" in err.value.hint
    check_liger(dataclasses.replace(args, use_liger_kernel=False), "cpu")  # off: no objection


# --- the torch probe on the real tiny model ------------------------------------------------
@pytest.fixture(scope="module")
def tiny(demo):
    from workers.torch.device import Platform, choose_device
    from workers.torch.kto import load_model

    choice = choose_device(Platform.detect(), "cpu", "auto")
    return choice, load_kto_dataset(demo["dataset"]), lambda: load_model(str(demo["model"]),
                                                                         choice)


def _probe(tiny, tmp_path, init_adapter: str = "", **knobs):
    from workers.torch.kto import kto_config, start_adapter
    from workers.torch.tune import TorchProbe

    choice, rows, load = tiny
    params = TORCH_KTO.validate({"max_steps": 3, "device": "cpu", "learning_rate": 1e-2,
                                 "init_adapter": init_adapter, **knobs})
    job = JobConfig(job_id=1, model="tiny", dataset=Path("d.jsonl"), run_dir=tmp_path,
                    args=TorchKTOArgs(**params))
    tokenizer, model = load()
    events = EventWriter(tmp_path / EVENTS_FILE)
    model, peft_config = start_adapter(job, model, events)
    return TorchProbe(job, choice, model, tokenizer, peft_config, rows[:40],
                      lambda a, **o: kto_config(job, choice, args=a, **o))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_the_probe_times_steps_and_leaves_a_fresh_model_as_it_was(tiny, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    probe = _probe(tiny, tmp_path)
    before = _state(probe.model)
    sps, peak = probe(torch_setting(2, 2, True), 2)
    assert sps > 0 and peak > 50 << 20  # the RSS on the CPU
    model = probe.model
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert "forward" not in model.__dict__ and not model.is_activation_checkpointing
    after = _state(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)

    # a precompute setting: the reference computed once for the run's rows is in the rate
    pre, _ = probe(torch_setting(2, 2, False, pre=True), 2)
    assert pre > 0
    with pytest.raises(SkipSetting, match="CUDA only"):
        probe(torch_setting(2, 2, False, liger=True), 2)


@pytest.mark.slow
def test_the_probe_puts_an_init_adapter_back_without_its_reference_copy(tiny, tmp_path, demo):
    from tests.helpers.adapters import build_lora_adapter

    adapter = build_lora_adapter(demo["model"], tmp_path / "start")
    probe = _probe(tiny, tmp_path, init_adapter=str(adapter))
    before = _state(probe.model)
    sps, _ = probe(torch_setting(2, 1, False), 2)
    assert sps > 0
    assert list(probe.model.peft_config) == ["default"]
    assert probe.model.active_adapter == "default"
    after = _state(probe.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    trainable = [n for n, p in probe.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)


# --- the worker's decision: tune, reuse, or train as given -----------------------------------
def _job(tmp_path: Path, resume: bool = False, **knobs) -> JobConfig:
    params = TORCH_KTO.validate({"per_device_train_batch_size": 2,
                                 "gradient_accumulation_steps": 8, "tune": "auto", **knobs})
    return JobConfig(job_id=1, model="tiny", dataset=Path("d.jsonl"), run_dir=tmp_path,
                     args=TorchKTOArgs(**params),
                     resume_from_checkpoint=tmp_path / "checkpoint-3" if resume else None)


def _decide(job: JobConfig, tmp_path: Path):
    """workers.torch.tune.tune where no probe may run (none is reached in these cases)."""
    from workers.torch.device import DeviceChoice
    from workers.torch.tune import tune

    def no_probe(*a, **k):
        raise AssertionError("no probe here")

    events = EventWriter(tmp_path / EVENTS_FILE)
    return tune(job, DeviceChoice("cpu", "float32"), None, None, None, [], events,
                lambda: False, no_probe)


def test_a_saved_choice_is_applied_a_foreign_one_ignored_and_a_plain_resume_untuned(tmp_path):
    from contract.tune import write_result

    job = _job(tmp_path)
    assert _decide(job, tmp_path)[0] is job  # no plan, no saved choice: as given
    assert _decide(_job(tmp_path, tune="off"), tmp_path)[0].args.tune == "off"

    write_result(tmp_path, TuneResult(chosen=torch_setting(16, 1, False), message="m"))
    tuned, reload = _decide(job, tmp_path)  # no plan needed: the saved choice is reused
    assert not reload
    assert (tuned.args.per_device_train_batch_size, tuned.args.gradient_accumulation_steps,
            tuned.args.gradient_checkpointing) == (16, 1, False)
    assert tuned.args.learning_rate == job.args.learning_rate

    write_result(tmp_path, TuneResult(chosen=torch_setting(4, 1, False), message="m"))
    assert _decide(job, tmp_path)[0] is job  # it would change the effective batch
    warnings = [e.data["message"] for e in events_in(tmp_path) if e.type == "log"]
    assert any("change the effective batch" in w for w in warnings)

    (tmp_path / RESULT_FILE).unlink()
    from contract.tune import write_plan

    write_plan(tmp_path, plan_of(torch_setting(16, 1, False)))
    resumed = _job(tmp_path, resume=True)  # its checkpoint was made with the knobs as given
    assert _decide(resumed, tmp_path)[0] is resumed
