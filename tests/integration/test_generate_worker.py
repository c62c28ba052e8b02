"""The generate job (an arena's answers) as the supervisor runs it: ``python -m workers.<backend>
--config <run_dir>/config.json``, torch and MLX, over the demo model and small random adapters.
Both variants answer every prompt into answers.jsonl; a greedy rerun writes the same texts;
SIGTERM after the first answer ends the job cancelled with the answers so far, and a rerun in
the same run folder writes only the missing ones, the same as one uninterrupted (seeded,
sampled) run; variant B on another model; a malformed prompts line is named."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from contract.job_config import write_config
from contract.knobs import METHODS
from tests.helpers.inference_worker import make_mlx_adapter, make_peft_adapter
from tests.helpers.workers import events_of, of_type, start_mlx, start_torch, wait_for_event

BACKENDS = ["torch", "mlx"]
QUESTIONS = ["What colour is grass?", "How many legs has a cat?", "Name a river."]
KEYS = {"index", "variant", "text", "completion_tokens", "finish_reason"}
ORDER = [(i, v) for v in "ab" for i in range(3)]
# Long enough that the 5 answers after the first take seconds, so a SIGTERM sent when the
# first answer's progress event appears comes before the last one (~50 and ~230 tokens/s on
# a 2-core CPU).
LONG = {"torch": 64, "mlx": 200}


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    if request.param == "mlx":
        pytest.importorskip("mlx_lm")
    else:
        pytest.importorskip("peft")
    return request.param


@pytest.fixture(scope="module")
def models(demo, tmp_path_factory):
    """The demo model and another: the same shapes and tokenizer, other weights."""
    from safetensors.numpy import load_file, save_file

    other = tmp_path_factory.mktemp("models") / "other-tiny"
    shutil.copytree(demo["model"], other)
    rng = np.random.default_rng(11)
    weights = {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) if v.ndim == 2 else v
               for k, v in load_file(str(other / "model.safetensors")).items()}
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    return {"demo": demo["model"], "other": other}


@pytest.fixture(scope="module")
def adapters(backend, models, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"{backend}-adapters")
    make = make_peft_adapter if backend == "torch" else make_mlx_adapter
    return {"demo": make(models["demo"], root / "demo", seed=1),
            "other": make(models["other"], root / "other", seed=2)}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
                            for q in QUESTIONS))
    return path


def start(backend: str, run_dir: Path, prompts: Path, model: Path, **params):
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, job_id=1, backend=backend, method="generate", model=str(model),
                 dataset=str(prompts), params=METHODS[(backend, "generate")].validate(params),
                 resume_from_checkpoint=None)
    return (start_torch if backend == "torch" else start_mlx)(run_dir)


def finish(proc, run_dir: Path, after: int = 0, timeout: float = 300):
    """(exit code, this run's events: those after seq ``after``, answers.jsonl's lines)."""
    rc = proc.wait(timeout=timeout)
    events = [e for e in events_of(run_dir) if e.seq > after]
    path = run_dir / "answers.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return rc, events, lines


def done(events) -> dict:
    (end,) = of_type(events, "done")
    return end


@pytest.fixture(scope="module")
def greedy(backend, models, adapters, prompts, tmp_path_factory):
    """Base (A) against the adapter (B), greedy, 16 tokens: (run_dir, rc, events, lines)."""
    run_dir = tmp_path_factory.mktemp(f"{backend}-greedy")
    proc = start(backend, run_dir, prompts, models["demo"], adapter_b=str(adapters["demo"]),
                 max_tokens=16, temperature=0.0)
    return (run_dir, *finish(proc, run_dir))


def test_both_variants_answer_every_prompt(backend, greedy):
    run_dir, rc, events, lines = greedy
    assert rc == 0, (run_dir / "worker.log").read_text()[-3000:]
    end = done(events)
    assert end["status"] == "succeeded"
    assert [(x["index"], x["variant"]) for x in lines] == ORDER
    assert all(set(x) == KEYS for x in lines)
    assert all(x["completion_tokens"] == 16 and x["finish_reason"] == "length" and x["text"]
               for x in lines)
    a, b = ([x["text"] for x in lines if x["variant"] == v] for v in "ab")
    assert a != b  # the adapter changes the answers
    progress = of_type(events, "progress")
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6]
    assert {p["total_steps"] for p in progress} == {6}
    phases = [s["phase"] for s in of_type(events, "status")]
    assert phases == ["loading_model", "generating", "generating"]  # one load for both
    (artifact,) = of_type(events, "artifact")
    assert artifact["kind"] == "answers" and artifact["path"] == str(run_dir / "answers.jsonl")
    summary = end["summary"]
    assert summary["answers"] == 6 and summary["prompts"] == 3
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_bytes"] > 0
    assert of_type(events, "memory")
    assert events[-1].type == "done"


def test_a_greedy_rerun_writes_the_same_texts(backend, greedy, models, adapters, prompts,
                                              tmp_path):
    proc = start(backend, tmp_path / "again", prompts, models["demo"],
                 adapter_b=str(adapters["demo"]), max_tokens=16, temperature=0.0)
    rc, events, lines = finish(proc, tmp_path / "again")
    assert rc == 0 and done(events)["status"] == "succeeded"
    assert lines == greedy[3]


def test_sigterm_keeps_the_answers_so_far_and_a_rerun_writes_the_rest(backend, models,
                                                                       adapters, prompts,
                                                                       tmp_path):
    params = {"adapter_a": str(adapters["demo"]), "max_tokens": LONG[backend],
              "temperature": 1.0, "seed": 3}
    run_dir = tmp_path / "run"
    proc = start(backend, run_dir, prompts, models["demo"], **params)
    wait_for_event(run_dir, lambda e: e.type == "progress", timeout=240)
    os.kill(proc.pid, signal.SIGTERM)
    rc, events, first = finish(proc, run_dir)
    assert rc == 0
    end = done(events)
    assert end["status"] == "cancelled" and not of_type(events, "artifact")
    assert 1 <= len(first) < 6 and end["summary"]["answers"] == len(first)
    assert [(x["index"], x["variant"]) for x in first] == ORDER[:len(first)]

    proc = start(backend, run_dir, prompts, models["demo"], **params)  # the job resumed
    rc, events, lines = finish(proc, run_dir, after=events[-1].seq)
    end = done(events)
    assert rc == 0 and end["status"] == "succeeded"
    assert end["summary"]["generated"] == 6 - len(first) and end["summary"]["answers"] == 6
    assert lines[:len(first)] == first and [(x["index"], x["variant"]) for x in lines] == ORDER
    assert [p["step"] for p in of_type(events, "progress")] == list(range(len(first), 7))

    proc = start(backend, tmp_path / "whole", prompts, models["demo"], **params)
    rc, _, whole = finish(proc, tmp_path / "whole")
    assert rc == 0 and lines == whole  # seeded per prompt: the same answers either way


def test_variant_b_on_another_model(backend, models, adapters, prompts, tmp_path):
    proc = start(backend, tmp_path, prompts, models["demo"], model_b=str(models["other"]),
                 adapter_b=str(adapters["other"]), max_tokens=16, temperature=0.0)
    rc, events, lines = finish(proc, tmp_path)
    assert rc == 0 and done(events)["status"] == "succeeded"
    loads = [s["message"] for s in of_type(events, "status") if s["phase"] == "loading_model"]
    assert len(loads) == 2 and str(models["other"]) in loads[1]
    assert [(x["index"], x["variant"]) for x in lines] == ORDER
    a, b = ([x["text"] for x in lines if x["variant"] == v] for v in "ab")
    assert a != b


def test_a_malformed_prompts_line_is_named(backend, models, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": "hi"}\n')
    proc = start(backend, tmp_path / "run", bad, models["demo"])
    rc, events, lines = finish(proc, tmp_path / "run")
    assert rc == 1 and lines == []
    (error,) = of_type(events, "error")
    assert error["error_type"] == "prompts"
    assert error["message"] == (f"line 2 of the prompts file {bad}: messages must be a "
                                "non-empty list")
    assert "Fix or remove that line" in error["hint"]
    assert done(events)["status"] == "failed"
