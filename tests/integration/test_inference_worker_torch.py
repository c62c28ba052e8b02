"""The torch inference worker (workers/torch/serve.py) as the server runs it: a real process
over the demo model, spoken to in contract/inference.py's lines. Greedy tokens equal bare
transformers + PEFT's, for the adapter and for the base side of a worker that has the adapter
attached; cancel, stop strings, a too-long prompt, an adapter of another base; the worker
exits when its stdin closes and when its parent dies."""

from __future__ import annotations

import pytest

from tests.helpers.inference_worker import (
    MESSAGES,
    InferenceWorker,
    make_peft_adapter,
    other_base_config,
    torch_greedy,
    wait_gone,
)

pytest.importorskip("peft")

MODULE = "workers.torch.serve"
TOKENS = 16


@pytest.fixture(scope="module")
def adapters(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("torch-adapters")
    return {"one": make_peft_adapter(demo["model"], root / "one", seed=1),
            "two": make_peft_adapter(demo["model"], root / "two", seed=2),
            "other": make_peft_adapter(None, root / "other", config=other_base_config())}


@pytest.fixture(scope="module")
def worker(demo, tmp_path_factory):
    w = InferenceWorker(MODULE, demo["model"], tmp_path_factory.mktemp("torch-serve") / "log")
    w.wait_ready()
    yield w
    w.kill()


def done(answer) -> dict:
    assert answer.end["type"] == "done", answer.end
    return answer.end


def test_ready_describes_the_model(worker, demo):
    ready = worker.ready
    assert ready["backend"] == "torch" and ready["model"] == str(demo["model"])
    assert ready["device"] == "cpu" and ready["dtype"] == "float32"
    assert ready["context_length"] == 1024
    assert ready["memory_bytes"] > 50e6 and ready["load_s"] > 0


def test_greedy_tokens_equal_transformers_and_peft(worker, demo, adapters):
    # The adapter first, so the base answer below comes from a worker with an adapter attached.
    tuned = worker.generate("tuned", adapter=adapters["one"], max_tokens=TOKENS)
    base = worker.generate("base", max_tokens=TOKENS)
    other = worker.generate("two", adapter=adapters["two"], max_tokens=TOKENS)
    again = worker.generate("tuned-again", adapter=adapters["one"], max_tokens=TOKENS)
    for answer in (tuned, base, other, again):
        end = done(answer)
        assert answer.start["prompt_tokens"] == end["prompt_tokens"] > 0
        assert end["completion_tokens"] == len(answer.ids) == TOKENS
        assert end["finish_reason"] == "length"
        assert end["ttft_s"] > 0 and end["tokens_per_s"] > 0 and end["memory_bytes"] > 0
    assert base.ids == torch_greedy(demo["model"], MESSAGES, max_tokens=TOKENS)
    assert tuned.ids == torch_greedy(demo["model"], MESSAGES, adapters["one"], TOKENS)
    assert other.ids == torch_greedy(demo["model"], MESSAGES, adapters["two"], TOKENS)
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


def test_adapter_of_another_base_is_422_naming_both(worker, demo, adapters):
    answer = worker.generate("misfit", adapter=adapters["other"])
    assert answer.end["type"] == "error" and answer.end["status"] == 422, answer.end
    assert str(adapters["other"]) in answer.end["message"]
    assert str(demo["model"]) in answer.end["message"]
    missing = worker.generate("missing", adapter=adapters["other"].parent / "nothing-here")
    assert missing.end["status"] == 422 and "no adapter at" in missing.end["message"]
    base = worker.generate("base-after-misfit", max_tokens=TOKENS)
    assert base.ids == torch_greedy(demo["model"], MESSAGES, max_tokens=TOKENS)


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


def test_adapters_share_the_base_weights(demo, adapters):
    """In process: two adapters attached, the base's weights are the same tensors as loaded."""
    from workers.torch.serve import TorchBackend

    backend = TorchBackend()
    backend.load(str(demo["model"]))
    before = {n: p.data_ptr() for n, p in backend.model.named_parameters()}
    backend.attach(str(adapters["one"]))
    backend.attach(str(adapters["two"]))
    after = {n.replace(".base_layer", ""): p.data_ptr()
             for n, p in backend.peft.get_base_model().named_parameters() if "lora_" not in n}
    assert after == before
    assert sorted(backend.adapters.values()) == ["adapter0", "adapter1"]


def test_an_mlx_adapter_is_422_on_the_torch_worker(worker, demo, tmp_path):
    pytest.importorskip("mlx_lm")
    from tests.helpers.inference_worker import make_mlx_adapter

    folder = make_mlx_adapter(demo["model"], tmp_path / "mlx")
    answer = worker.generate("mlx-adapter", adapter=folder)
    assert answer.end["status"] == 422 and "not a PEFT adapter" in answer.end["message"]
