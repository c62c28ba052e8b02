"""The generate job's loop (workers/generate.py) over a fake serving backend: the answers file
and its order, progress, one load when both variants share the model and a freed model before
another loads, seeded answers, a stop that lets the answer in hand finish and a resume that
writes only the missing ones, a line cut short by a kill, bad prompts files, the context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.events import EVENTS_FILE, EventWriter, read_events
from contract.job_config import JobConfig
from contract.knobs import TORCH_GENERATE
from contract.method_args import GenerateArgs
from tests.helpers.inference_worker import FakeBackend
from workers import generate
from workers.memory import MemorySampler
from workers.runtime import HintedError, RunResult, Session, StopFlag

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]


class Backend(FakeBackend):
    """Answers ``model|adapter|seed`` one character a token; records what it was asked."""

    log: list[tuple] = []
    on_stream = None  # called at each answer's start (a test stops the job from there)

    def load(self, model: str) -> None:
        super().load(model)
        self.model = model
        self.log.append(("load", model))

    def attach(self, adapter: str | None) -> None:
        super().attach(adapter)
        self.log.append(("attach", self.model, adapter))

    def stream(self, ids, adapter, sampling, cancelled, emit):
        if Backend.on_stream is not None:
            Backend.on_stream()
        text = f"{self.model}|{adapter}|{sampling.seed}|{sampling.temperature}"
        for char in text[:sampling.max_tokens]:
            emit(char, [ord(char)])
        return "stop" if len(text) <= sampling.max_tokens else "length"

    def close(self) -> None:
        self.log.append(("close", self.model))


@pytest.fixture(autouse=True)
def fresh_log():
    Backend.log, Backend.on_stream = [], None


def write_prompts(path: Path, prompts=PROMPTS, extra: str = "") -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in prompts) + extra)
    return path


def job(tmp_path: Path, prompts: Path | None = None, **params) -> JobConfig[GenerateArgs]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = GenerateArgs(**TORCH_GENERATE.validate({"max_tokens": 64, **params}))
    return JobConfig(job_id=1, model="base", dataset=prompts or write_prompts(
        tmp_path / "prompts.jsonl"), run_dir=run_dir, args=args, backend="torch",
        method="generate")


def run(config: JobConfig) -> tuple[RunResult, list, list[dict]]:
    events = EventWriter(config.run_dir / EVENTS_FILE)
    session = Session(events, MemorySampler(events.emit), StopFlag())
    Backend.session = session
    result = generate.run(config, session, Backend)
    events.close()
    answers_file = config.run_dir / generate.ANSWERS_FILE
    lines = [json.loads(line) for line in answers_file.read_text().splitlines()]
    return result, read_events(config.run_dir / EVENTS_FILE)[0], lines


def of(events, kind: str) -> list[dict]:
    return [e.data for e in events if e.type == kind]


def test_both_variants_answer_every_prompt_in_order_on_one_load(tmp_path):
    config = job(tmp_path, adapter_b="tuned", temperature=0.0)
    result, events, lines = run(config)
    assert result.status == "succeeded"
    assert [(x["index"], x["variant"]) for x in lines] == [
        (0, "a"), (1, "a"), (2, "a"), (0, "b"), (1, "b"), (2, "b")]
    assert set(lines[0]) == {"index", "variant", "text", "completion_tokens", "finish_reason"}
    seeds = [generate.answer_seed(0, i) for i in range(3)]
    assert [x["text"] for x in lines] == [f"base|{a}|{s}|0.0" for a in ("None", "tuned")
                                          for s in seeds]
    assert all(x["finish_reason"] == "stop" and x["completion_tokens"] == len(x["text"])
               for x in lines)
    # one load; both adapters attached before the first answer; nothing freed
    assert Backend.log == [("load", "base"), ("attach", "base", None),
                           ("attach", "base", "tuned")]
    progress = of(events, "progress")
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5, 6]
    assert {p["total_steps"] for p in progress} == {6}
    assert [s["phase"] for s in of(events, "status")] == ["loading_model", "generating",
                                                            "generating"]
    (artifact,) = of(events, "artifact")
    assert artifact["kind"] == "answers"
    assert artifact["path"] == str(config.run_dir / "answers.jsonl")
    assert result.summary["answers"] == 6 and result.summary["prompts"] == 3
    assert result.summary["tokens_per_s"] > 0


def test_another_model_for_b_frees_a_before_it_loads(tmp_path):
    result, _, lines = run(job(tmp_path, adapter_a="one", model_b="other", adapter_b="two"))
    assert result.status == "succeeded"
    assert Backend.log == [("load", "base"), ("attach", "base", "one"), ("close", "base"),
                           ("load", "other"), ("attach", "other", "two")]
    assert [x["text"].split("|")[:2] for x in lines] == [["base", "one"]] * 3 + [
        ["other", "two"]] * 3


def test_a_rerun_writes_the_same_answers(tmp_path):
    _, _, first = run(job(tmp_path / "1", seed=7))
    _, _, second = run(job(tmp_path / "2", seed=7))
    _, _, other = run(job(tmp_path / "3", seed=8))
    assert first == second and first != other
    assert generate.answer_seed(7, 2) == generate.answer_seed(7, 2) != generate.answer_seed(8, 2)


def test_a_stop_finishes_the_answer_in_hand_and_a_resume_writes_the_rest(tmp_path):
    config = job(tmp_path, adapter_b="tuned")
    streams = []

    def stop_in_the_second_answer():
        streams.append(1)
        if len(streams) == 2:
            Backend.session.stop._event.set()  # what SIGTERM does

    Backend.on_stream = stop_in_the_second_answer
    result, events, lines = run(config)
    assert result.status == "cancelled"
    assert [(x["index"], x["variant"]) for x in lines] == [(0, "a"), (1, "a")]
    assert result.summary["answers"] == 2 and not of(events, "artifact")

    Backend.on_stream, Backend.log = None, []
    result, events, lines = run(config)
    assert result.status == "succeeded" and result.summary["generated"] == 4
    assert [(x["index"], x["variant"]) for x in lines] == [
        (0, "a"), (1, "a"), (2, "a"), (0, "b"), (1, "b"), (2, "b")]
    assert [p["step"] for p in of(events, "progress")][-5:] == [2, 3, 4, 5, 6]
    _, _, whole = run(job(tmp_path / "whole", adapter_b="tuned"))
    assert lines == whole  # a stopped and resumed job writes what one run writes


def test_a_line_cut_short_by_a_kill_is_dropped_and_written_again(tmp_path):
    config = job(tmp_path)
    _, _, whole = run(config)
    path = config.run_dir / "answers.jsonl"
    text = path.read_text()
    path.write_text(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])  # half a line
    result, events, lines = run(config)
    assert result.summary["generated"] == 1 and lines == whole
    assert any("dropped 1 unreadable" in log["message"] for log in of(events, "log"))


def test_a_variant_already_answered_is_not_loaded(tmp_path):
    config = job(tmp_path, model_b="other")
    run(config)
    Backend.log = []
    result, _, lines = run(config)
    assert result.status == "succeeded" and result.summary["generated"] == 0
    assert Backend.log == [] and len(lines) == 6


@pytest.mark.parametrize(("line", "says"), [
    ("{not json", "not JSON"),
    ('{"prompt": "hi"}', "not an object with a messages list"),
    ('{"messages": []}', "messages must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}', "message 0 must be an object with role and content"),
])
def test_a_bad_prompts_line_is_named(tmp_path, line, says):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1], f"\n{line}\n")
    with pytest.raises(generate.PromptsError) as err:
        run(job(tmp_path, prompts))
    assert f"line 3 of the prompts file {prompts}: {says}" in err.value.message
    assert "Fix or remove that line" in err.value.hint


def test_a_missing_or_empty_prompts_file_says_so(tmp_path):
    with pytest.raises(generate.PromptsError, match="no prompts file at"):
        run(job(tmp_path, tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(generate.PromptsError, match="holds no prompts"):
        run(job(tmp_path, tmp_path / "empty.jsonl"))


def test_max_tokens_shrinks_to_the_room_left_and_a_prompt_that_fills_it_fails(tmp_path):
    # The fake context is 64 tokens, a character a token: this prompt leaves 4.
    long = [[{"role": "user", "content": "x" * 60}]]
    result, _, lines = run(job(tmp_path, write_prompts(tmp_path / "p.jsonl", long)))
    assert result.status == "succeeded"
    assert {(x["completion_tokens"], x["finish_reason"]) for x in lines} == {(4, "length")}
    too_long = [*PROMPTS, [{"role": "user", "content": "x" * 64}]]
    with pytest.raises(HintedError) as err:
        run(job(tmp_path / "2", write_prompts(tmp_path / "p2.jsonl", too_long)))
    assert err.value.error_type == "context_length"
    assert err.value.message.startswith("prompt 3 for variant A (base, no adapter): the prompt "
                                        "is 64 tokens")


def test_an_adapter_that_does_not_fit_fails_before_any_answer(tmp_path):
    with pytest.raises(HintedError) as err:
        run(job(tmp_path, adapter_b="misfit"))
    assert err.value.error_type == "adapter" and "variant B" in err.value.message
    assert (tmp_path / "run" / "answers.jsonl").read_text() == ""


def test_top_p_zero_is_refused(tmp_path):
    from contract.knobs import ParamError

    with pytest.raises(ParamError, match="top_p"):
        run(job(tmp_path, top_p=0.0))
