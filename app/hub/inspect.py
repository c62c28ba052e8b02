"""What a model is, read from its files without loading it: config.json and safetensors headers.

``inspect_model(path_or_id)`` answers "how big is this model and what shape is it" for the
memory planner and the models page. It never imports torch or mlx and never downloads: a local
folder, or a hub id that is already in the Hugging Face cache
(``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``).

A safetensors file starts with an 8-byte little-endian header length and a JSON header giving
each tensor's dtype and shape; reading those few kilobytes gives the exact parameter count and
the bytes the weights take, quantized MLX weights (uint32-packed, with scales and biases)
included. Without safetensors the count is computed from the config's sizes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract.model_ref import hub_id_problem, is_folder_path

DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
SAFETENSORS_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit; a bigger length means a broken file


class ModelInfoError(ValueError):
    """The model cannot be inspected: no folder, no config.json, or a broken file."""


def hub_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where huggingface_hub keeps downloads, in its own order: $HF_HUB_CACHE (or the older
    $HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub
    (~/.cache by default). Models, the model picker and hub datasets all read it here."""
    env = os.environ if env is None else env
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() \
        / "huggingface" / "hub"


def resolve_model_dir(path_or_id: str, env: dict[str, str] | None = None) -> Path | None:
    """The folder holding the model's config.json, or None when it is neither a local folder
    nor a hub id in the cache. The cache's ``refs/main`` snapshot wins; else the newest."""
    value = str(path_or_id).strip()
    if not value:
        return None
    if is_folder_path(value):  # absolute only: never a folder relative to the server's cwd
        local = Path(value).expanduser()
        return local if local.is_dir() else None
    if hub_id_problem(value):
        return None
    repo = hub_cache_dir(env) / ("models--" + value.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        if (snapshots / commit / "config.json").is_file():
            return snapshots / commit
    found = [d for d in snapshots.iterdir() if (d / "config.json").is_file()]
    return max(found, key=lambda d: d.stat().st_mtime) if found else None


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """{tensor name: {"dtype", "shape"}} from a safetensors file's header (no tensor data)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelInfoError(f"{path.name} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER:
                raise ModelInfoError(f"{path.name} has a header length of {length} bytes")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInfoError(f"cannot read the safetensors header of {path.name}: {exc}") \
            from None
    if not isinstance(header, dict):
        raise ModelInfoError(f"{path.name}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return {k: v for k, v in header.items()
            if isinstance(v, dict) and "dtype" in v and "shape" in v}


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def weights_from_headers(files: list[Path], bits: int | None) -> dict[str, Any]:
    """Parameter count, bytes and main float dtype over the safetensors files.

    MLX quantized layers store ``<x>.weight`` as uint32 words of ``32 / bits`` values each,
    with ``<x>.scales`` and ``<x>.biases``: those weights count as their unpacked size and
    the scales and biases count as bytes, not parameters.
    """
    tensors: dict[str, dict[str, Any]] = {}
    for f in files:
        tensors.update(read_safetensors_header(f))
    params = total_bytes = 0
    by_dtype: dict[str, int] = {}
    for name, t in tensors.items():
        n = _numel(t["shape"])
        total_bytes += n * DTYPE_BYTES.get(t["dtype"], 4)
        base = name.rsplit(".", 1)[0]
        quantized = bits and t["dtype"] == "U32" and f"{base}.scales" in tensors
        if quantized:
            params += n * 32 // bits
        elif name.endswith((".scales", ".biases")) and f"{base}.weight" in tensors \
                and tensors[f"{base}.weight"]["dtype"] == "U32":
            continue
        else:
            params += n
            by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + n
    floats = {k: v for k, v in by_dtype.items() if k in SAFETENSORS_NAMES}
    main = max(floats, key=floats.get) if floats else None
    return {"params": params, "weights_bytes": total_bytes, "tensors": len(tensors),
            "dtype": SAFETENSORS_NAMES.get(main) if main else None}


def safetensors_files(folder: Path) -> list[Path]:
    """The model's weight files: those the index names, else every *.safetensors there
    (adapters and optimizer states live in other folders)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, json.JSONDecodeError, AttributeError):
            names = set()
        files = [folder / n for n in sorted(names)]
        if files and all(f.is_file() for f in files):
            return files
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Vision-language configs nest the language model's sizes under text_config."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def params_from_config(c: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen/Mistral-style decoder from its sizes (MoE aware)."""
    h, v, n = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    attn = h * q * 2 + h * kv * 2 + (q + 2 * kv if c.get("attention_bias") else 0)
    if c.get("num_experts"):
        mlp = c["num_experts"] * 3 * h * c["moe_intermediate_size"] + h * c["num_experts"]
        mlp += 3 * h * c.get("shared_expert_intermediate_size", 0)
    else:
        mlp = 3 * h * c["intermediate_size"]
    embed = v * h * (1 if c["tie_word_embeddings"] else 2)
    return embed + n * (attn + mlp + 2 * h) + h


def inspect_model(path_or_id: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The facts the planner needs; raises ModelInfoError when there is nothing to read.

    Keys: path, model_type, architectures, params, params_source ("safetensors" or
    "config"), weights_bytes (stored size, None without safetensors), num_hidden_layers,
    hidden_size, intermediate_size, active_intermediate_size (what one token goes through:
    top-k experts for MoE), num_attention_heads, num_key_value_heads, head_dim, vocab_size,
    tie_word_embeddings, dtype, quantization ({"bits", "group_size"} or None), num_experts,
    num_experts_per_tok, moe_intermediate_size.
    """
    folder = resolve_model_dir(path_or_id, env)
    if folder is None:
        raise ModelInfoError(f"{path_or_id!r} is neither a model folder nor a hub id in the "
                             "local Hugging Face cache")
    config_path = folder / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelInfoError(f"{folder} has no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelInfoError(f"cannot read {config_path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelInfoError(f"{config_path} is not a JSON object")
    c = _text_config(raw)
    try:
        facts = _sizes(c)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelInfoError(f"{config_path} lacks the sizes of a decoder model ({exc})") \
            from None
    quant = raw.get("quantization") or raw.get("quantization_config")
    quantization = None
    if isinstance(quant, dict) and isinstance(quant.get("bits"), int):
        quantization = {"bits": quant["bits"], "group_size": int(quant.get("group_size", 64))}
    files = safetensors_files(folder)
    stored = weights_from_headers(files, quantization and quantization["bits"]) if files \
        else None
    dtype = raw.get("torch_dtype") or raw.get("dtype") or c.get("torch_dtype") \
        or c.get("dtype") or (stored or {}).get("dtype") or "float32"
    if stored and stored["params"]:
        params, source, wbytes = stored["params"], "safetensors", stored["weights_bytes"]
    else:
        params, source, wbytes = params_from_config(facts), "config", None
    return {
        "path": str(folder), "model_type": raw.get("model_type"),
        "architectures": raw.get("architectures") or [], "params": params,
        "params_source": source, "weights_bytes": wbytes, "dtype": str(dtype),
        "quantization": quantization, **facts,
    }


def _sizes(c: dict[str, Any]) -> dict[str, Any]:
    h = int(c["hidden_size"])
    heads = int(c["num_attention_heads"])
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    per_tok = int(c.get("num_experts_per_tok") or 0)
    moe_i = int(c.get("moe_intermediate_size") or c.get("intermediate_size") or 0)
    inter = int(c.get("intermediate_size") or moe_i)
    shared = int(c.get("shared_expert_intermediate_size") or 0)
    active = moe_i * per_tok + shared if experts and per_tok else inter
    return {
        "num_hidden_layers": int(c["num_hidden_layers"]), "hidden_size": h,
        "intermediate_size": inter, "active_intermediate_size": active,
        "num_attention_heads": heads,
        "num_key_value_heads": int(c.get("num_key_value_heads") or heads),
        "head_dim": int(c.get("head_dim") or h // heads), "vocab_size": int(c["vocab_size"]),
        "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
        "attention_bias": bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
        "num_experts": experts, "num_experts_per_tok": per_tok,
        "moe_intermediate_size": moe_i if experts else 0,
        "shared_expert_intermediate_size": shared,
    }
