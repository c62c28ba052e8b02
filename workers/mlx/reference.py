"""Where an MLX KTO run starts, and its reference model (docs/design.md, "KTO").

- A fresh LoRA (``init_adapter`` empty): the reference is the base model, the adapter switched
  off (every LoRA layer's scale at 0): no second copy of anything.
- An initial adapter (``init_adapter`` = an MLX adapter folder, ``adapters.safetensors`` and
  ``adapter_config.json`` as mlx-lm and Prospect jobs save it): the LoRA layers take that
  adapter's shape (its num_layers, lora_parameters, fine_tune_type, in place of the job's
  knobs) and weights, and the reference is the starting policy, base + the initial adapter,
  frozen: a copy of the initial adapter arrays, swapped in for the reference forward passes
  and swapped out after them. It is never trained and never saved; a resumed run loads it
  again from the folder before the checkpoint's weights, so it stays the initial adapter.

The swap sets module attributes, so it works eagerly and inside ``mx.compile``: the reference
arrays go in as captured inputs of the compiled step (workers/mlx/kto.py's KTOStep), not as
constants of its graph.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.tuner.utils import linear_to_lora_layers

from contract.events import EventWriter
from contract.job_config import JobConfig
from contract.method_args import MLXKTOArgs
from workers.mlx.common import ADAPTER_CONFIG, ADAPTER_FILE
from workers.runtime import HintedError

PEFT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class InitAdapterError(HintedError):
    """``init_adapter`` names a folder this job cannot start from."""

    error_type = "init_adapter"


def read_init_adapter(folder: str, model: str) -> dict[str, Any]:
    """The adapter_config.json of an MLX LoRA/DoRA adapter folder, or InitAdapterError
    naming what the folder is and what to pick instead."""
    path = Path(folder)
    fix = (f"set init_adapter to an MLX adapter trained on {model} (a finished MLX job's id, "
           "or its adapter folder), or leave it empty for a fresh LoRA.")
    if not path.is_absolute():
        raise InitAdapterError(f"init_adapter {folder!r} is not an absolute folder.", fix)
    if not path.is_dir():
        raise InitAdapterError(f"init_adapter {folder} is not a folder (it does not exist).",
                               fix)
    if any((path / name).is_file() for name in PEFT_FILES):
        raise InitAdapterError(
            f"init_adapter {folder} looks like a PEFT (torch) adapter "
            f"({', '.join(n for n in PEFT_FILES if (path / n).is_file())}); MLX jobs start "
            "from MLX adapters.", f"Run the job on the torch backend to start from it, or {fix}")
    missing = [n for n in (ADAPTER_FILE, ADAPTER_CONFIG) if not (path / n).is_file()]
    if missing:
        raise InitAdapterError(f"init_adapter {folder} is not an MLX adapter: it has no "
                               f"{' and no '.join(missing)}.", fix)
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise InitAdapterError(f"init_adapter {folder}: {ADAPTER_CONFIG} is not readable "
                               f"JSON ({exc}).", fix) from exc
    kind = config.get("fine_tune_type", "lora") if isinstance(config, dict) else None
    if kind == "full":
        raise InitAdapterError(f"init_adapter {folder} holds fully fine-tuned weights "
                               "(fine_tune_type full), not a LoRA adapter.",
                               "Use it as the job's model instead, or " + fix)
    params = config.get("lora_parameters") if isinstance(config, dict) else None
    if (kind not in ("lora", "dora") or not isinstance(config.get("num_layers"), int)
            or not isinstance(params, dict)
            or not {"rank", "scale"} <= set(params)):
        raise InitAdapterError(f"init_adapter {folder}: {ADAPTER_CONFIG} is not mlx-lm's "
                               "LoRA config (fine_tune_type lora or dora, num_layers, "
                               "lora_parameters with rank and scale).", fix)
    return config


def add_init_adapter(model: nn.Module, job: JobConfig[MLXKTOArgs],
                     events: EventWriter) -> tuple[int, dict[str, Any]]:
    """Freeze the base, build the initial adapter's LoRA layers and load its weights; return
    (adapted blocks, the adapter_config.json this run saves: the adapter's shape)."""
    args, folder = job.args, job.args.init_adapter
    config = read_init_adapter(folder, job.model)
    kind = config.get("fine_tune_type", "lora")
    lora = {"dropout": 0.0, **config["lora_parameters"]}
    mx.random.seed(args.seed)
    model.freeze()
    try:
        linear_to_lora_layers(model, config["num_layers"], lora, use_dora=kind == "dora")
    except (ValueError, KeyError, TypeError) as exc:
        raise InitAdapterError(f"init_adapter {folder} does not fit {job.model}: {exc}.",
                               _fit_fix(config, job.model)) from exc
    check_fit(model, folder, job.model, config)
    model.load_weights(str(Path(folder) / ADAPTER_FILE), strict=False)
    mx.eval(model.parameters())
    num_layers = min(max(config["num_layers"], 0) or len(model.layers), len(model.layers))
    knobs = {"num_layers": args.num_layers, "rank": args.rank, "scale": args.scale,
             "dropout": args.dropout}
    own = {"num_layers": config["num_layers"], "rank": lora["rank"], "scale": lora["scale"],
           "dropout": lora["dropout"]}
    events.emit("log", level="info", message=(
        f"starting from the adapter {folder} ({kind}): its shape replaces the knobs "
        f"({', '.join(f'{k} {v:g}' for k, v in own.items())} in place of "
        f"{', '.join(f'{k}={v:g}' for k, v in knobs.items())}); the reference model is the "
        "base with this adapter, frozen"))
    saved = {"model": job.model, "fine_tune_type": kind, "num_layers": config["num_layers"],
             "lora_parameters": lora,
             "prospect": {"job_id": job.job_id, "method": job.method,
                          "params": args.to_params(), "init_adapter": folder}}
    return num_layers, saved


def check_fit(model: nn.Module, folder: str, model_id: str, config: dict[str, Any]) -> None:
    """The adapter's tensors are exactly the LoRA layers' (names and shapes), else an error."""
    try:
        weights = mx.load(str(Path(folder) / ADAPTER_FILE))
    except Exception as exc:  # a damaged or foreign file
        raise InitAdapterError(f"init_adapter {folder}: {ADAPTER_FILE} is not readable "
                               f"({exc}).", _fit_fix(config, model_id)) from exc
    own = dict(tree_flatten(model.trainable_parameters()))
    wrong = [f"{k} {tuple(v.shape)} vs the model's {tuple(own[k].shape)}"
             for k, v in weights.items() if k in own and v.shape != own[k].shape]
    extra = sorted(set(weights) - set(own))
    missing = sorted(set(own) - set(weights))
    problems = ([f"{len(wrong)} tensors of another shape (e.g. {wrong[0]})"] if wrong else []) \
        + ([f"{len(extra)} tensors the model has no place for (e.g. {extra[0]})"]
           if extra else []) \
        + ([f"{len(missing)} LoRA tensors missing (e.g. {missing[0]})"] if missing else [])
    if problems:
        raise InitAdapterError(f"init_adapter {folder} does not fit {model_id}: "
                               f"{'; '.join(problems)}.", _fit_fix(config, model_id))


def _fit_fix(config: dict[str, Any], model_id: str) -> str:
    trained_on = config.get("model")
    said = f" (its {ADAPTER_CONFIG} names {trained_on})" if trained_on else ""
    return (f"An adapter fits only the base model it was trained on{said}: pick an adapter "
            f"trained on {model_id}, run the job on that adapter's model, or leave init_adapter "
            "empty for a fresh LoRA.")


# --- the reference model -------------------------------------------------------------------
def initial_reference(model: nn.Module):
    """The adapter as it is now (the initial adapter, before any resume): the frozen
    reference's arrays, a tree shaped as ``model.trainable_parameters()``, kept outside the
    model so nothing trains or saves it."""
    reference = tree_map(lambda a: mx.array(a), model.trainable_parameters())
    mx.eval(reference)
    return reference


@contextlib.contextmanager
def as_reference(model: nn.Module, reference=None):
    """The reference model for the block's forward passes: the adapter switched off (every
    LoRA layer's scale at 0) when ``reference`` is None, else the reference arrays in place of
    the adapter's; the policy is put back afterwards."""
    if reference is None:
        layers = [m for _, m in model.named_modules()
                  if hasattr(m, "lora_a") and hasattr(m, "scale")]
        scales = [m.scale for m in layers]
        for m in layers:
            m.scale = 0.0
        try:
            yield
        finally:
            for m, s in zip(layers, scales, strict=True):
                m.scale = s
        return
    policy = model.trainable_parameters()
    model.update(reference)
    try:
        yield
    finally:
        model.update(policy)
