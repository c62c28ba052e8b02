"""What a model folder holds, read from its files (issue 15): whether it is complete
(config.json, a tokenizer, weights), MLX or transformers, quantized how, and its size. The
registration and conversion rules that use these are app/jobs/model_folders.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from app.hub.inspect import ModelInfoError, inspect_model
from app.models import ModelEntry

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


# --- what a folder holds ----------------------------------------------------------------------
def weight_files(folder: Path) -> list[Path]:
    """safetensors (transformers' or MLX's), PyTorch .bin shards, or an older MLX weights.npz."""
    found: list[Path] = []
    for pattern in ("*.safetensors", "pytorch_model*.bin", "weights*.npz"):
        found += sorted(p for p in folder.glob(pattern) if p.is_file())
    return found


def read_config(folder: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def missing_pieces(folder: Path) -> list[str]:
    """What a loadable model folder needs and this one lacks, in words; [] when complete."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    elif read_config(folder) is None:
        missing.append("a readable config.json (it is not a JSON object)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, tokenizer.model or vocab.json)")
    if not weight_files(folder):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    return missing


def quantization(config: dict[str, Any] | None) -> dict[str, int] | None:
    quant = (config or {}).get("quantization") or (config or {}).get("quantization_config")
    if isinstance(quant, dict) and isinstance(quant.get("bits"), int):
        return {"bits": quant["bits"], "group_size": int(quant.get("group_size") or 64)}
    return None


def is_mlx(folder: Path, config: dict[str, Any] | None) -> bool:
    """mlx-lm writes a quantization block for MLX's quantized layers, and tags every
    safetensors file it saves with the metadata format "mlx"."""
    quant = (config or {}).get("quantization")
    if isinstance(quant, dict) and quant.get("bits"):
        return True
    for path in sorted(folder.glob("*.safetensors"))[:1]:
        try:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size)) if 0 < size < 100_000_000 else {}
        except (OSError, ValueError):
            return False
        return (header.get("__metadata__") or {}).get("format") == "mlx"
    return (folder / "weights.npz").is_file()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def slug(text: str) -> str:
    """Text as a model id: letters, digits, '.', '_' and '-'."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")
    return re.sub(r"-{2,}", "-", text)[:120].rstrip("-._") or "model"


def describe_entry(entry: ModelEntry) -> dict[str, Any]:
    """A registered model as the API and the Models page show it: format (mlx or
    transformers), quantization, architecture, parameters, dtype, size on disk."""
    folder = Path(entry.path)
    exists = (folder / "config.json").is_file()
    out: dict[str, Any] = {"id": entry.id, "path": entry.path, "source": entry.source,
                           "created_at": entry.created_at, "exists": exists}
    if not exists:
        return out
    config = read_config(folder)
    out |= {"format": "mlx" if is_mlx(folder, config) else "transformers",
            "quantization": quantization(config), "size_bytes": folder_size(folder)}
    try:
        info = inspect_model(str(folder))
    except (ModelInfoError, OSError):
        return out
    return out | {"architecture": ", ".join(info.get("architectures") or [])
                  or info.get("model_type") or "", "params": info.get("params"),
                  "dtype": info.get("dtype")}
