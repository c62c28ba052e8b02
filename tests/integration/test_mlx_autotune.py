"""``tune: auto`` through the real MLX KTO worker on the tiny demo model: the run folder holds a
tune_plan.json as the server writes it (contract/tune.py); the worker times each candidate and
the seed defaults, emits one ``tune`` event, writes tune.json, trains with the fastest split
of the same effective batch and succeeds; a resume from a checkpoint in the same folder
reuses tune.json and probes nothing."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlx_lm")

from contract.events import LOG_FILE  # noqa: E402
from contract.tune import Candidate, TunePlan, read_result, write_plan  # noqa: E402
from tests.helpers.workers import of_type, run_mlx, write_mlx_config  # noqa: E402

PARAMS = {"iters": 4, "batch_size": 2, "grad_accumulation_steps": 2, "learning_rate": 1e-3,
          "steps_per_report": 2, "steps_per_save": 2, "compile": False, "tune": "auto"}
SEED = {"batch_size": 2, "grad_accumulation_steps": 2, "grad_checkpoint": False,
        "compile": False}
CANDIDATES = [{"batch_size": 4, "grad_accumulation_steps": 1, "grad_checkpoint": False,
               "compile": False},
              {"batch_size": 2, "grad_accumulation_steps": 2, "grad_checkpoint": True,
               "compile": False}]


def _timings(events) -> list[str]:
    return [s["message"] for s in of_type(events, "status")
            if s.get("phase") == "tuning" and s["message"].startswith("timing")]


def test_tune_auto_chooses_trains_and_a_resume_reuses_the_choice(tmp_path, demo):
    run_dir = tmp_path / "run"
    write_mlx_config(run_dir, demo, "kto", PARAMS)
    write_plan(run_dir, TunePlan(candidates=[Candidate(c, label=str(i))
                                             for i, c in enumerate(CANDIDATES)],
                                 baseline=SEED, budget_bytes=8 * 2**30, probe_steps=1,
                                 probe_budget_s=120, effective_batch=4))
    rc, events = run_mlx(run_dir, timeout=300)
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    assert len(_timings(events)) == 3  # two candidates and the seed defaults
    (tune,) = of_type(events, "tune")
    assert [t["outcome"] for t in tune["tried"]] == ["ok"] * 3
    assert all(t["samples_per_s"] > 0 and t["peak_bytes"] > 0 for t in tune["tried"])
    fastest = max(tune["tried"], key=lambda t: t["samples_per_s"])["settings"]
    assert tune["chosen"] == fastest
    assert tune["message"].startswith("tried 3 settings: batch 4 × 1")
    assert "; chose batch" in tune["message"]
    assert tune["baseline_samples_per_s"] > 0 and tune["probe_s"] > 0
    assert read_result(run_dir).chosen == tune["chosen"]
    kinds = [e.type for e in events]
    assert kinds.index("tune") < kinds.index("progress")  # chosen before training starts
    assert [p["step"] for p in of_type(events, "progress")] == [1, 2, 3, 4]
    assert events[-1].data["status"] == "succeeded"
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    params = saved["prospect"]["params"]
    assert {k: params[k] for k in fastest} == fastest  # trained with the chosen values
    assert params["batch_size"] * params["grad_accumulation_steps"] == 4

    # A resume in the same folder (as the server resumes): tune.json is reused, no probe.
    checkpoint = run_dir / "checkpoints" / "checkpoint-2"
    assert checkpoint.is_dir()
    before = len(events)
    write_mlx_config(run_dir, demo, "kto", PARAMS, resume_from_checkpoint=str(checkpoint))
    rc, events = run_mlx(run_dir, timeout=300)
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    resumed = events[before:]
    assert _timings(resumed) == [] and of_type(resumed, "tune") == []
    assert any(s["message"].startswith("reusing the tuned settings")
               for s in of_type(resumed, "status"))
    assert [p["step"] for p in of_type(resumed, "progress")] == [3, 4]
    assert resumed[-1].data["status"] == "succeeded"
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert {k: saved["prospect"]["params"][k] for k in fastest} == fastest


def test_sft_tune_auto_splits_the_effective_batch_and_succeeds(tmp_path, demo):
    run_dir = tmp_path / "sft"
    params = {"iters": 2, "batch_size": 4, "grad_accumulation_steps": 1, "learning_rate": 1e-3,
              "steps_per_report": 1, "steps_per_eval": 2, "steps_per_save": 2,
              "val_batches": 1, "tune": "auto"}
    write_mlx_config(run_dir, demo, "sft", params)
    split = {"batch_size": 2, "grad_accumulation_steps": 2, "grad_checkpoint": False,
             "compile": True}
    seed = {"batch_size": 4, "grad_accumulation_steps": 1, "grad_checkpoint": False,
            "compile": True}
    write_plan(run_dir, TunePlan(candidates=[Candidate(split)], baseline=seed,
                                 budget_bytes=8 * 2**30, probe_steps=1, effective_batch=4))
    rc, events = run_mlx(run_dir, timeout=300)
    assert rc == 0, (run_dir / LOG_FILE).read_text()[-3000:]
    (tune,) = of_type(events, "tune")
    assert [t["settings"] for t in tune["tried"]] == [split, seed]
    assert [t["outcome"] for t in tune["tried"]] == ["ok", "ok"]
    losses = [m["values"]["loss"] for m in of_type(events, "metric") if "loss" in m["values"]]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    done = events[-1].data
    assert done["status"] == "succeeded"
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert {k: saved["prospect"]["params"][k] for k in split} == tune["chosen"]
