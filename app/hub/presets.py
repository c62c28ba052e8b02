"""The Models page's *Suggested models*: the seed guide's tables, plus a person's own presets.

The seed presets themselves (hub id, backend, method, the model's published shape, the
knobs the guide recommends for its size) live with the memory planner, which plans them
before their model is here: ``app.planner.check.presets()``. ``app.hub`` sits below the
planner, so the caller passes them in; this module adds what the Models page needs on top:

- extra presets from a JSON file (``PROSPECT_PRESETS_FILE``, default
  ``$PROSPECT_HOME/presets.json``): a model of your own, or a mirror's, listed beside the
  seed's with the same Download / Train button. A preset with the id of a seed preset
  replaces it. A broken file is reported (``problems``), never fatal;
- the download size, estimated from the parameter count and the weights' precision (the
  hub's file list gives the exact number when the download starts);
- what the Train button opens: ``/jobs/new?model=…&backend=…&method=…&<knobs>``: the
  preset's own method (the seed's MLX tables are LoRA, i.e. SFT) with the seed's knobs.

The file: ``{"presets": [{...}, ...]}`` (or the list alone), each entry::

    {"id": "my-tiny", "model": "acme/tiny-chat", "backend": "torch", "method": "kto",
     "title": "Tiny chat · torch KTO", "seed_says": "a smoke test",
     "params": {"max_steps": 20, "learning_rate": 1e-4},
     "shape": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000},
     "quantization": null, "download_bytes": 1234567}

``shape`` is config.json's sizes (or the name of one of the planner's published shapes) and
lets the planner plan the model before it is downloaded; without it the plan waits for the
files. ``model`` is a hub id (org/name).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.hub.inspect import _sizes, params_from_config
from contract.knobs import method_for
from contract.model_ref import hub_id_problem

PRESETS_FILE_ENV = "PROSPECT_PRESETS_FILE"
PRESETS_FILE_NAME = "presets.json"
ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,79}$")
TRAINING = (("torch", "kto"), ("mlx", "kto"), ("mlx", "sft"))
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class Quantization(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bits: int = Field(ge=2, le=8)
    group_size: int = Field(default=64, ge=8, le=1024)


class ExtraPreset(BaseModel):
    """One entry of the presets file."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=80)
    model: str = Field(max_length=200)
    backend: Literal["torch", "mlx"] = "torch"
    method: str = "kto"
    title: str = Field(default="", max_length=200)
    seed_says: str = Field(default="", max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    shape: dict[str, Any] | str | None = None
    quantization: Quantization | None = None
    download_bytes: int | None = Field(default=None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ID_RE.match(value):
            raise ValueError("an id is letters, digits, '-', '_' and '.'")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        problem = hub_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def presets_file(home: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where a person's own presets are read from."""
    env = os.environ if env is None else env
    given = (env.get(PRESETS_FILE_ENV) or "").strip()
    return Path(given).expanduser() if given else home / PRESETS_FILE_NAME


def _entry_problem(preset: ExtraPreset, shapes: Mapping[str, Any]) -> str | None:
    if (preset.backend, preset.method) not in TRAINING:
        return (f"{preset.backend}/{preset.method} is not a training method (torch/kto, "
                "mlx/kto, mlx/sft)")
    if isinstance(preset.shape, str) and preset.shape not in shapes:
        return (f"shape {preset.shape!r} is not one of the planner's ({', '.join(shapes)}); "
                "give config.json's sizes instead")
    if isinstance(preset.shape, dict):
        missing = [k for k in SHAPE_KEYS if not isinstance(preset.shape.get(k), int)]
        if missing:
            return f"shape lacks {', '.join(missing)} (config.json's sizes, as integers)"
    spec = method_for(preset.backend, preset.method)
    unknown = sorted(k for k in preset.params if spec.knob(k) is None)
    if unknown:
        return f"{preset.backend}/{preset.method} has no knob {', '.join(unknown)}"
    return None


def load_extra(path: Path, shapes: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The file's presets as plain dicts (as the seed's), and what was wrong with it; a
    missing file is no presets and no problem."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot be read ({exc})"]
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [], [f"{path}: not JSON ({exc.msg} at line {exc.lineno})"]
    entries = data.get("presets") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        return [], [f"{path}: expected {{\"presets\": [...]}} or a list of presets"]
    out, problems, seen = [], [], set()
    for n, entry in enumerate(entries, 1):
        try:
            preset = ExtraPreset.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            problems.append(f"{path}: preset {n}: {where}: {first['msg']}")
            continue
        problem = _entry_problem(preset, shapes)
        if problem or preset.id in seen:
            problems.append(f"{path}: preset {n} ({preset.id}): "
                            f"{problem or 'the id is used twice'}")
            continue
        seen.add(preset.id)
        item = preset.model_dump()
        item["title"] = item["title"] or f"{preset.model} · {preset.backend} " \
                                         f"{preset.method.upper()}"
        item["seed_says"] = item["seed_says"] or "your preset"
        item["origin"] = "file"
        out.append(item)
    return out, problems


def merged(seed: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The person's presets first, then the seed's; a file entry replaces the seed preset
    with its id."""
    ids = {p["id"] for p in extra}
    return [*extra, *({**p, "origin": "seed"} for p in seed if p["id"] not in ids)]


def shape_facts(shape: Mapping[str, Any], quantization: Mapping[str, Any] | None) -> dict:
    """Planner facts from config.json sizes, as app.planner.check.shape_facts gives them
    for its named shapes."""
    facts = _sizes(dict(shape))
    return {"path": None, "model_type": shape.get("model_type", "llama"), "architectures": [],
            "params": params_from_config(facts), "params_source": "config",
            "weights_bytes": None, "dtype": "float16" if quantization else "bfloat16",
            "quantization": dict(quantization) if quantization else None, **facts}


def download_estimate(params: int | None, quantization: Mapping[str, Any] | None) -> int | None:
    """Bytes of the weights on the hub: 16-bit, or packed values plus an fp16 scale and bias
    per group (MLX's layout). Tokenizer and config files add a few MiB."""
    if not params:
        return None
    if quantization:
        return int(params * (quantization["bits"] / 8 + 4 / quantization["group_size"]))
    return int(params * 2)


def train_knobs(preset: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's knobs that its method takes (the seed's recipe for that method)."""
    spec = method_for(preset["backend"], preset.get("method") or "kto")
    return {k: v for k, v in preset.get("params", {}).items() if spec.knob(k) is not None}


def _query_value(value: Any) -> str:
    if isinstance(value, bool):  # the form ticks a box for any non-empty value
        return "true" if value else ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def train_url(preset: Mapping[str, Any]) -> str:
    """/jobs/new with the preset's model, backend and knobs filled in."""
    query = {"model": preset["model"], "backend": preset["backend"],
             "method": preset.get("method") or "kto"}
    query.update({k: _query_value(v) for k, v in train_knobs(preset).items()})
    return "/jobs/new?" + urlencode(query)
