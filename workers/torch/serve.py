"""The torch inference worker: ``python -m workers.torch.serve --model PATH``.

transformers loads the base model once, on the device and in the precision training would
choose (workers/torch/device.py). Adapters are PEFT LoRA folders attached by name to one
``PeftModel`` (``load_adapter``) and switched per request (``set_adapter``); the base side
runs inside ``disable_adapter()``, never on a second copy of the weights. Generation is
``model.generate`` on the serving thread, each token handed to the loop by a streamer as
it comes (no second thread: see ``Backend.stream``); the streamer ends generate once the
request is cancelled. The protocol and the loop are workers/serve.py's.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.memory import process_rss_bytes, torch_probe
from workers.model_source import model_source
from workers.runtime import loading_model
from workers.serve import (
    Emit,
    RequestError,
    Sampling,
    chat_prompt_ids,
    context_length,
    run,
)
from workers.serve_text import IncrementalDecoder

ENVIRONMENT = {"PYTORCH_ENABLE_MPS_FALLBACK": "1"}
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class _Cancelled(Exception):
    """Raised by the streamer to end ``generate`` once the request is cancelled: cheaper than
    a stopping criterion, which adds a tensor op on the device to every step."""


LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def adapter_problems(folder: Path, base: Any) -> list[str]:
    """Why the PEFT adapter in ``folder`` cannot sit on ``base``: each LoRA matrix must meet a
    layer of the base with its input and output size. Empty when it fits."""
    from safetensors import safe_open

    weights = folder / PEFT_WEIGHTS[0]
    if not weights.is_file():
        return []  # an old .bin adapter: PEFT's own load says what is wrong
    problems = []
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is no dict
            match = LORA_KEY.match(key)
            if not match:
                continue
            path, side = match.groups()
            shape = f.get_slice(key).get_shape()
            try:
                layer = base.get_submodule(path)
            except AttributeError:
                problems.append(f"{path}: the model has no such layer")
                continue
            size, want = (shape[1], "in_features") if side == "A" else (shape[0], "out_features")
            have = getattr(layer, want, None)
            if have is not None and have != size:
                problems.append(f"{path}: adapter {want} {size}, model {have}")
    return problems


def strip_lora(model: Any) -> None:
    """Put the plain layers back where a failed PEFT load left LoRA layers."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())


class TorchBackend:
    name = "torch"

    def __init__(self) -> None:
        self.device = self.dtype = ""
        self.context_length = 0
        self.model_id = ""
        self.model: Any = None  # the transformers model
        self.peft: Any = None  # the PeftModel around it once an adapter is attached
        self.tokenizer: Any = None
        self.adapters: dict[str, str] = {}  # folder -> PEFT adapter name
        self.probe = None

    def load(self, model: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from workers.torch.device import Platform, choose_device

        choice = choose_device(Platform.detect())
        source = model_source(model)
        with loading_model(source):
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(
                source, dtype=getattr(torch, choice.dtype))
        self.model.to(choice.device).eval()
        self.model_id, self.device, self.dtype = model, choice.device, choice.dtype
        config = self.model.config.get_text_config()
        self.context_length = context_length(getattr(config, "max_position_embeddings", None),
                                             self.tokenizer.model_max_length)
        self.probe = torch_probe(choice.device)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, self.model_id, messages)

    def attach(self, adapter: str | None) -> None:
        if adapter is None or adapter in self.adapters:
            return
        folder = Path(adapter)
        config = folder / "adapter_config.json"
        hint = f"Use an adapter trained on {self.model_id}."
        if not config.is_file():
            raise RequestError(422, "adapter", f"no adapter at {adapter} (adapter_config.json "
                               "is missing)", hint)
        raw = json.loads(config.read_text())
        if "peft_type" not in raw or not any((folder / f).is_file() for f in PEFT_WEIGHTS):
            raise RequestError(422, "adapter", f"{adapter} is not a PEFT adapter (an MLX one?); "
                               "the torch backend loads PEFT adapters", "Load it with the "
                               "backend that trained it.")
        base = self.peft.get_base_model() if self.peft is not None else self.model
        problems = adapter_problems(folder, base)
        if problems:
            raise RequestError(422, "adapter", f"the adapter {adapter} does not fit the model "
                               f"{self.model_id}: {'; '.join(problems[:3])}", hint)
        name = f"adapter{len(self.adapters)}"
        try:
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
                self.peft.eval()
            else:
                self.peft.load_adapter(str(folder), adapter_name=name)
        except Exception as exc:
            if self.peft is None:
                strip_lora(self.model)
            else:
                with contextlib.suppress(Exception):
                    self.peft.delete_adapter(name)
            raise RequestError(422, "adapter", f"the adapter {adapter} does not fit the model "
                               f"{self.model_id}: {exc}", hint) from exc
        self.adapters[adapter] = name

    def stream(self, ids: list[int], adapter: str | None, sampling: Sampling,
               cancelled: Callable[[], bool], emit: Emit) -> str:
        import torch
        from transformers.generation.streamers import BaseStreamer

        decoder = IncrementalDecoder(
            lambda part: self.tokenizer.decode(part, skip_special_tokens=True))
        last: list[int | None] = [None]

        class Streamer(BaseStreamer):
            """Hands each new token to ``emit`` on generate's own thread (this one)."""

            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate hands over the prompt first
                    self.prompt_seen = True
                    return
                new = [int(t) for t in value.reshape(-1).tolist()]
                if new:
                    last[0] = new[-1]
                emit(decoder.push(new), new)
                if cancelled():  # stop after the token in hand
                    raise _Cancelled

            def end(self):
                pass

        if adapter is not None:
            self.peft.set_adapter(self.adapters[adapter])
            model, side = self.peft, contextlib.nullcontext()
        elif self.peft is not None:
            model, side = self.peft, self.peft.disable_adapter()
        else:
            model, side = self.model, contextlib.nullcontext()
        input_ids = torch.tensor([ids], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": sampling.max_tokens, "streamer": Streamer(),
            "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id
            is not None else self.tokenizer.eos_token_id,
        }
        if sampling.temperature == 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with contextlib.suppress(_Cancelled), side, torch.inference_mode():
            model.generate(**kwargs)
        tail = decoder.flush()
        if tail:
            emit(tail, [])
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        return "stop" if last[0] in eos else "length"

    def close(self) -> None:
        """Let go of the model, its adapters and the device memory they held (a batch job
        that loads another model next: workers/generate.py)."""
        import gc

        import torch

        self.model = self.peft = self.tokenizer = None
        self.adapters = {}
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
        elif self.device == "mps":
            torch.mps.empty_cache()

    def memory_bytes(self) -> int:
        total = process_rss_bytes()
        if self.probe is not None:
            with contextlib.suppress(Exception):
                backend = self.probe()
                total += backend.get("driver_bytes") or backend.get("active_bytes") or 0
        return total


if __name__ == "__main__":
    run(TorchBackend, "python -m workers.torch.serve", ENVIRONMENT)
