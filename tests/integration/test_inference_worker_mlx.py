"""The MLX inference worker (workers/mlx/serve.py) as the server runs it: a real process over
the demo model, spoken to in contract/inference.py's lines. Greedy tokens equal mlx-lm's own
(``load(adapter_path=)`` + ``stream_generate``), for each adapter and for the base side of a
worker with adapters attached; cancel, stop strings, a too-long prompt, an adapter that does
not fit; the worker exits when its stdin closes and when its parent dies."""

from __future__ import annotations

import pytest

from tests.helpers.inference_worker import (
    MESSAGES,
    InferenceWorker,
    make_mlx_adapter,
    make_peft_adapter,
    mlx_greedy,
    wait_gone,
)

pytest.importorskip("mlx_lm")

MODULE = "workers.mlx.serve"
TOKENS = 16


@pytest.fixture(scope="module")
def adapters(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlx-adapters")
    return {"one": make_mlx_adapter(demo["model"], root / "one", seed=1),
            "two": make_mlx_adapter(demo["model"], root / "two", seed=2, num_layers=1),
            "misfit": make_mlx_adapter(demo["model"], root / "misfit", wrong_shape=True)}


@pytest.fixture(scope="module")
def worker(demo, tmp_path_factory):
    w = InferenceWorker(MODULE, demo["model"], tmp_path_factory.mktemp("mlx-serve") / "log")
    w.wait_ready()
    yield w
    w.kill()


def done(answer) -> dict:
    assert answer.end["type"] == "done", answer.end
    return answer.end


def test_ready_describes_the_model(worker, demo):
    ready = worker.ready
    assert ready["backend"] == "mlx" and ready["model"] == str(demo["model"])
    assert ready["device"] in ("cpu", "gpu") and ready["dtype"] == "float32"
    assert ready["context_length"] == 1024
    assert ready["memory_bytes"] > 20e6 and ready["load_s"] > 0


def test_greedy_tokens_equal_mlx_lm(worker, demo, adapters):
    # Adapters first, so the base answer comes from a worker with two adapters attached.
    tuned = worker.generate("tuned", adapter=adapters["one"], max_tokens=TOKENS)
    other = worker.generate("two", adapter=adapters["two"], max_tokens=TOKENS)
    base = worker.generate("base", max_tokens=TOKENS)
    again = worker.generate("tuned-again", adapter=adapters["one"], max_tokens=TOKENS)
    for answer in (tuned, other, base, again):
        end = done(answer)
        assert answer.start["prompt_tokens"] == end["prompt_tokens"] > 0
        assert end["completion_tokens"] == len(answer.ids) == TOKENS
        assert end["finish_reason"] == "length"
        assert end["ttft_s"] > 0 and end["tokens_per_s"] > 0 and end["memory_bytes"] > 0
    assert base.ids == mlx_greedy(demo["model"], MESSAGES, max_tokens=TOKENS)
    assert tuned.ids == mlx_greedy(demo["model"], MESSAGES, adapters["one"], TOKENS)
    assert other.ids == mlx_greedy(demo["model"], MESSAGES, adapters["two"], TOKENS)
    assert again.ids == tuned.ids
    assert tuned.ids != base.ids and other.ids != tuned.ids  # the adapters change the answer


def test_cancel_mid_generation_then_the_next_request_works(worker):
    def cancel(answer):
        if len(answer.tokens) == 1:
            worker.send({"op": "cancel", "id": "long"})

    answer = worker.generate("long", max_tokens=1000, temperature=1.0, seed=3, on_token=cancel)
    end = done(answer)
    assert end["finish_reason"] == "cancelled"
    assert end["completion_tokens"] < 1000
    assert done(worker.generate("after-cancel", max_tokens=4))["finish_reason"] == "length"


def test_stop_string_ends_the_answer_before_it(worker):
    full = worker.generate("full", max_tokens=24, temperature=1.0, seed=7)
    text = full.text
    stop = next(text[i:i + 3] for i in range(4, len(text) - 3) if text[i:i + 3].strip()
                and text.find(text[i:i + 3]) == i)
    cut = worker.generate("cut", max_tokens=24, temperature=1.0, seed=7, stop=["zzzz", stop])
    assert cut.text == text[:text.find(stop)]
    assert done(cut)["finish_reason"] == "stop"
    assert done(cut)["completion_tokens"] < done(full)["completion_tokens"]


def test_prompt_longer_than_the_context_is_422_and_the_worker_stays_up(worker):
    long = [{"role": "user", "content": "the capital of France is Paris " * 300}]
    answer = worker.generate("long-prompt", long)
    assert answer.start is None and answer.end["type"] == "error"
    assert answer.end["status"] == 422 and answer.end["error_type"] == "context_length"
    count = int(answer.end["message"].split("prompt is ")[1].split()[0])
    assert count > 1024 and "1024" in answer.end["message"]
    assert done(worker.generate("after-long", max_tokens=4))["completion_tokens"] == 4


def test_adapter_that_does_not_fit_is_422_and_the_base_is_untouched(worker, demo, adapters,
                                                                     tmp_path):
    answer = worker.generate("misfit", adapter=adapters["misfit"])
    assert answer.end["type"] == "error" and answer.end["status"] == 422, answer.end
    assert str(adapters["misfit"]) in answer.end["message"]
    assert str(demo["model"]) in answer.end["message"]
    pytest.importorskip("peft")
    peft = make_peft_adapter(demo["model"], tmp_path / "peft")
    wrong_kind = worker.generate("peft", adapter=peft)
    assert wrong_kind.end["status"] == 422 and "PEFT" in wrong_kind.end["message"]
    base = worker.generate("base-after-misfit", max_tokens=TOKENS)
    assert base.ids == mlx_greedy(demo["model"], MESSAGES, max_tokens=TOKENS)


def test_closing_stdin_ends_the_worker(demo, tmp_path):
    w = InferenceWorker(MODULE, demo["model"], tmp_path / "log")
    w.wait_ready()
    assert w.close(timeout=30) == 0


def test_the_worker_exits_when_its_parent_dies(demo, tmp_path):
    w = InferenceWorker(MODULE, demo["model"], tmp_path / "log", parent=True)
    pid = w.worker_pid()
    try:
        w.wait_ready()
        w.kill()  # the parent; our end of the worker's stdin stays open
        wait_gone(pid)
    finally:
        w.proc.stdin.close()


def test_adapters_wrap_the_base_layers_without_copies(demo, adapters):
    """In process: each adapter's LoRA layers wrap the very layers the base model loaded, and
    between requests the base model holds its own layers again."""
    from workers.mlx.serve import MLXBackend

    backend = MLXBackend()
    backend.load(str(demo["model"]))
    originals = dict(backend.model.named_modules())

    def as_loaded() -> bool:
        now = dict(backend.model.named_modules())
        return now.keys() == originals.keys() and all(now[k] is originals[k] for k in now)

    backend.attach(str(adapters["one"]))
    backend.attach(str(adapters["two"]))
    assert as_loaded()  # the base side is the model as loaded
    for name in ("one", "two"):
        layers = backend.adapters[str(adapters[name])]
        assert layers and all(layer.linear is originals[path] for path, layer in layers.items())
    backend._use(str(adapters["two"]))
    assert not as_loaded()
    backend._use(None)
    assert as_loaded()
