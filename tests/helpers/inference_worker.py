"""Real inference workers for the tests: start one (straight, or under a parent the test can
kill), talk to it in contract/inference.py's lines, and build small random adapters for the
demo model that really change its greedy answer. Also the bare libraries' greedy answers to
compare with, and a fake backend (no ML library) for the shared loop:
``python -m tests.helpers.inference_worker --model X`` is a worker over it."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from contract import inference as proto
from tests.helpers import ROOT

MESSAGES = [{"role": "user", "content": "What colour is grass?"}]
FAKE = "tests.helpers.inference_worker"
# A parent that starts the worker with our stdin/stdout and waits: the test kills it.
SPAWNER = "import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()"


@dataclass
class Answer:
    start: dict | None = None
    tokens: list[dict] = field(default_factory=list)
    end: dict = field(default_factory=dict)  # done or error

    @property
    def text(self) -> str:
        return "".join(t["text"] for t in self.tokens)

    @property
    def ids(self) -> list[int]:
        return [i for t in self.tokens for i in t["ids"]]


class InferenceWorker:
    """A worker process and a thread reading its stdout into a queue."""

    def __init__(self, module: str, model: str | Path, log: Path, *, parent: bool = False,
                 env: dict[str, str] | None = None):
        command = [sys.executable, "-m", module, "--model", str(model)]
        if parent:
            command = [sys.executable, "-c", SPAWNER, *command]
        self.log = log
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log.open("ab"), env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        self.replies: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready: dict = {}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(proto.decode(line))
        self.replies.put(None)

    def reply(self, timeout: float = 60) -> dict:
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no reply in {timeout} s; log:\n{self.log_text()}") from None
        assert message is not None, f"the worker closed its stdout; log:\n{self.log_text()}"
        return message

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 180) -> dict:
        self.ready = self.reply(timeout)
        assert self.ready["type"] == "ready", self.ready
        return self.ready

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write(proto.encode(message))
        self.proc.stdin.flush()

    def generate(self, id: str, messages: list[dict] | None = None,
                 adapter: str | Path | None = None, *, on_token=None, timeout: float = 120,
                 **sampling: Any) -> Answer:
        """Send one request; collect its replies up to done or error. ``on_token(answer)``
        runs after each token (a test cancels from there)."""
        sampling = {"temperature": 0.0, "max_tokens": 16, **sampling}
        self.send(proto.generate_request(id, messages or MESSAGES,
                                         str(adapter) if adapter else None, **sampling))
        answer = Answer()
        while True:
            message = self.reply(timeout)
            assert message.get("id") == id, message
            if message["type"] == "start":
                answer.start = message
            elif message["type"] == "token":
                answer.tokens.append(message)
                if on_token is not None:
                    on_token(answer)
            else:
                answer.end = message
                return answer

    def worker_pid(self, timeout: float = 30) -> int:
        """The worker's pid: ours, or (under a spawner) the spawner's one child."""
        if self.proc.args[1] != "-c":
            return self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = psutil.Process(self.proc.pid).children()
            if children:
                return children[0].pid
            time.sleep(0.05)
        raise AssertionError("the spawner started no worker")

    def close(self, timeout: float = 30) -> int:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=30)


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Until ``pid`` has exited (a zombie nobody reaps counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()
    raise AssertionError(f"the worker {pid} is still running {timeout} s after its parent died")


# --- adapters ------------------------------------------------------------------------------
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_peft_adapter(model_dir: Path | None, folder: Path, *, seed: int = 0,
                      config: Any = None) -> Path:
    """A PEFT LoRA on every linear layer, random A and B (not the no-op init). ``config``: a
    transformers config for a model of other sizes instead of the folder's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if config is not None:
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0,
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(str(folder))
    return folder


def make_mlx_adapter(model_dir: Path, folder: Path, *, seed: int = 0, num_layers: int = 2,
                     wrong_shape: bool = False) -> Path:
    """An MLX LoRA as workers/mlx/common.py saves it, lora_b random (mlx-lm starts it at
    zero); ``wrong_shape``: lora_a of another input size, as an adapter of another base."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from workers.mlx.common import load_model, save_adapter

    mx.random.seed(seed)
    model, _ = load_model(str(model_dir))
    model.freeze()
    params = {"rank": 8, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, num_layers, params)
    for _, module in model.named_modules():
        if "lora_b" in module:
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
            if wrong_shape:
                module.lora_a = mx.random.normal((module.lora_a.shape[0] // 2 + 1,
                                                  module.lora_a.shape[1]))
    return save_adapter(model, folder, {"model": str(model_dir), "fine_tune_type": "lora",
                                        "num_layers": num_layers, "lora_parameters": params})


def other_base_config() -> Any:
    """A Llama of other sizes: its adapters do not fit the demo model."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16)


# --- the bare libraries ---------------------------------------------------------------------
def torch_greedy(model_dir: Path, messages: list[dict], adapter: Path | None = None,
                 max_tokens: int = 16) -> list[int]:
    """transformers (+ PEFT) generate(do_sample=False): the new token ids, end of text dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                        add_generation_prompt=True)
    prompt = torch.tensor([ids])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                         max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return [t for t in out[0, len(ids):].tolist() if t != tokenizer.eos_token_id]


def mlx_greedy(model_dir: Path, messages: list[dict], adapter: Path | None = None,
               max_tokens: int = 16) -> list[int]:
    """mlx_lm.load(adapter_path=) + stream_generate (what mlx_lm.generate runs), greedy."""
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(model_dir), adapter_path=str(adapter) if adapter else None)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                        add_generation_prompt=True)
    tokens = [r.token for r in stream_generate(model, tokenizer, ids, max_tokens=max_tokens)]
    return [t for t in tokens if t not in tokenizer.eos_token_ids]


# --- a backend with no ML library, for the shared loop ---------------------------------------
class FakeBackend:
    """One character a token, from a fixed text. Prompt tokens: one per character of the
    messages' contents. Context 64. A message "hang" makes the stream wait for a cancel after
    its first token; "explode" makes it fail; adapter "misfit" does not fit."""

    name, device, dtype, context_length = "fake", "cpu", "none", 64
    TEXT = "The quick brown fox jumps over the lazy dog. "

    def __init__(self) -> None:
        self.hang = self.explode = False

    def load(self, model: str) -> None:
        if model == "missing":
            from workers.runtime import ModelNotFound

            raise ModelNotFound("no model folder at missing")

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        contents = [m["content"] for m in messages]
        self.hang, self.explode = "hang" in contents, "explode" in contents
        return [ord(c) for c in "".join(contents)]

    def attach(self, adapter: str | None) -> None:
        from workers.serve import RequestError

        if adapter == "misfit":
            raise RequestError(422, "adapter", "the adapter misfit does not fit the model fake")

    def stream(self, ids, adapter, sampling, cancelled, emit):
        for n in range(sampling.max_tokens):
            if self.explode:
                raise RuntimeError("the fake backend exploded")
            char = self.TEXT[n % len(self.TEXT)]
            emit(char, [ord(char)])
            while self.hang and not cancelled():
                time.sleep(0.01)
            if cancelled():
                return "length"
        return "length"

    def memory_bytes(self) -> int:
        print("a library's stray print")  # must not reach the protocol stream
        return 1


if __name__ == "__main__":
    from workers.serve import run

    run(FakeBackend, "python -m tests.helpers.inference_worker")
