"""The MLX inference worker: ``python -m workers.mlx.serve --model PATH``.

mlx-lm loads the base model once. An adapter folder (``adapters.safetensors`` and
``adapter_config.json``, as mlx-lm and Prospect's MLX jobs write them) is attached by mlx-lm's
own ``load_adapters``, which wraps the model's linear layers in LoRA layers around the same
weights; those wrappers are kept and the original layers put back. A request swaps in its
adapter's wrappers, or the original layers for the base side: the base side is the model as
loaded with no adapter, and the base weights exist once. Generation is
``mlx_lm.stream_generate`` with ``make_sampler(temperature, top_p)``; the protocol and the
loop are workers/serve.py's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.memory import mlx_probe, process_rss_bytes
from workers.serve import (
    Emit,
    RequestError,
    Sampling,
    chat_prompt_ids,
    context_length,
    run,
)

ADAPTER_FILE = "adapters.safetensors"  # workers/mlx/common.py's names, without importing mlx
ADAPTER_CONFIG = "adapter_config.json"


def set_module(root: Any, path: str, module: Any) -> None:
    """Put ``module`` at the dotted ``path`` of ``root`` (list indices included)."""
    parent_path, _, name = path.rpartition(".")
    parent = root
    for part in parent_path.split(".") if parent_path else []:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    if isinstance(parent, list):
        parent[int(name)] = module
    else:
        parent[name] = module


class MLXBackend:
    name = "mlx"

    def __init__(self) -> None:
        self.device = self.dtype = ""
        self.context_length = 0
        self.model_id = ""
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapters: dict[str, dict[str, Any]] = {}  # folder -> {module path: LoRA layer}
        self.originals: dict[str, Any] = {}  # module path -> the base model's own layer
        self.active: str | None = None

    def load(self, model: str) -> None:
        from mlx.utils import tree_flatten

        from workers.mlx.common import device_name, load_model

        self.model, self.tokenizer, config = load_model(model, return_config=True)
        self.model_id, self.device = model, device_name()
        params = tree_flatten(self.model.parameters())
        self.dtype = str(params[0][1].dtype).rsplit(".", 1)[-1] if params else "unknown"
        text = config.get("text_config") or {}
        self.context_length = context_length(
            config.get("max_position_embeddings") or text.get("max_position_embeddings"),
            getattr(self.tokenizer, "model_max_length", None))
        self._warm_up()

    def _warm_up(self) -> None:
        """One short greedy run: MLX compiles its kernels on first use (seconds on a CPU),
        which belongs to the load, not to the first answer's time to first token."""
        from mlx_lm import stream_generate

        for _ in stream_generate(self.model, self.tokenizer, [0, 0], max_tokens=2):
            pass

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, self.model_id, messages)

    def attach(self, adapter: str | None) -> None:
        if adapter is None or adapter in self.adapters:
            return
        from mlx_lm.tuner.utils import load_adapters

        folder = Path(adapter)
        hint = f"Use an adapter trained on {self.model_id}."
        if not (folder / ADAPTER_CONFIG).is_file():
            raise RequestError(422, "adapter", f"no adapter at {adapter} ({ADAPTER_CONFIG} "
                               "is missing)", hint)
        if not (folder / ADAPTER_FILE).is_file():
            peft = "peft_type" in json.loads((folder / ADAPTER_CONFIG).read_text())
            raise RequestError(422, "adapter", f"{adapter} is not an MLX adapter"
                               + (" (a PEFT one: the torch backend loads it)" if peft else
                                  f" ({ADAPTER_FILE} is missing)"), hint)
        self._use(None)  # attach onto the base model's own layers
        before = dict(self.model.named_modules())
        try:
            load_adapters(self.model, str(folder))
            self.model.eval()  # new layers start in training mode (dropout on)
        except Exception as exc:
            self._restore(before)
            raise RequestError(422, "adapter", f"the adapter {adapter} does not fit the model "
                               f"{self.model_id}: {exc}", hint) from exc
        self.adapters[adapter] = self._restore(before)

    def _restore(self, before: dict[str, Any]) -> dict[str, Any]:
        """Put back the layers ``load_adapters`` replaced; return the replacements."""
        after = dict(self.model.named_modules())
        replaced = {path: after[path] for path in before
                    if path in after and after[path] is not before[path]}
        for path in replaced:
            self.originals.setdefault(path, before[path])
            set_module(self.model, path, before[path])
        return replaced

    def _use(self, adapter: str | None) -> None:
        if adapter == self.active:
            return
        if self.active is not None:
            for path in self.adapters[self.active]:
                set_module(self.model, path, self.originals[path])
        if adapter is not None:
            for path, layer in self.adapters[adapter].items():
                set_module(self.model, path, layer)
        self.active = adapter

    def stream(self, ids: list[int], adapter: str | None, sampling: Sampling,
               cancelled: Callable[[], bool], emit: Emit) -> str:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        self._use(adapter)
        if sampling.seed is not None:
            mx.random.seed(sampling.seed)
        sampler = make_sampler(sampling.temperature, sampling.top_p)
        responses = stream_generate(self.model, self.tokenizer, ids,
                                    max_tokens=sampling.max_tokens, sampler=sampler)
        reason = "length"
        try:
            for response in responses:
                emit(response.text, [int(response.token)])
                if response.finish_reason:
                    reason = response.finish_reason
                    break
                if cancelled():
                    break
        finally:
            responses.close()
        return reason

    def close(self) -> None:
        """Let go of the model, its adapters and the buffers MLX keeps for reuse (a batch job
        that loads another model next: workers/generate.py)."""
        import gc

        import mlx.core as mx

        self.model = self.tokenizer = None
        self.adapters, self.originals, self.active = {}, {}, None
        gc.collect()
        mx.clear_cache()

    def memory_bytes(self) -> int:
        total = process_rss_bytes()
        if self.device == "gpu":  # on the CPU MLX's buffers are part of the RSS already
            with contextlib.suppress(Exception):
                total += mlx_probe()["driver_bytes"]
        return total


if __name__ == "__main__":
    run(MLXBackend, "python -m workers.mlx.serve")
