"""app.hub.inspect: facts from config.json and safetensors headers, never loading a tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from app.hub.inspect import (
    ModelInfoError,
    inspect_model,
    read_safetensors_header,
    resolve_model_dir,
)
from workers.tools.demo_assets import build_model


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A real safetensors file: 8-byte header length, JSON header, zero-filled data."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "U32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def config(**more) -> dict:
    return {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 32, "tie_word_embeddings": True, **more}


def test_demo_model(tmp_path):
    folder = build_model(tmp_path / "tiny")
    info = inspect_model(str(folder))
    assert info["params_source"] == "safetensors"
    assert info["params"] == 121344  # what torch counts for the demo model
    assert info["weights_bytes"] == info["params"] * 4  # stored in fp32
    assert (info["num_hidden_layers"], info["hidden_size"], info["vocab_size"]) == (2, 64, 739)
    assert info["tie_word_embeddings"] and info["quantization"] is None


def test_header_only_and_mlx_quantized(tmp_path):
    folder = tmp_path / "q4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        config(quantization={"bits": 4, "group_size": 64})))
    write_safetensors(folder / "model.safetensors", {
        "model.embed_tokens.weight": ("U32", [32, 1]),  # 8 values per uint32 at 4 bits
        "model.embed_tokens.scales": ("F16", [32, 1]),
        "model.embed_tokens.biases": ("F16", [32, 1]),
        "model.norm.weight": ("BF16", [8]),
    })
    header = read_safetensors_header(folder / "model.safetensors")
    assert header["model.norm.weight"] == {"dtype": "BF16", "shape": [8],
                                            "data_offsets": [256, 272]}
    info = inspect_model(str(folder))
    assert info["quantization"] == {"bits": 4, "group_size": 64}
    assert info["params"] == 32 * 8 + 8  # unpacked, scales and biases not counted
    assert info["weights_bytes"] == 32 * 4 + 32 * 2 * 2 + 8 * 2


def test_config_only_counts_from_sizes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config()))
    info = inspect_model(str(tmp_path))
    # embed 32*8 + attention (8*8*2 + 8*4*2) + mlp 3*8*16 + 2 norms + final norm
    assert info["params"] == 256 + 192 + 384 + 16 + 8
    assert info["params_source"] == "config" and info["weights_bytes"] is None


def test_hub_cache_snapshot(tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config()))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    assert resolve_model_dir("org/tiny", env) == snap
    assert inspect_model("org/tiny", env)["hidden_size"] == 8
    assert resolve_model_dir("org/absent", env) is None
    with pytest.raises(ModelInfoError, match="local Hugging Face cache"):
        inspect_model("org/absent", env)


def test_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelInfoError, match="no config.json"):
        inspect_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelInfoError, match="cannot read"):
        inspect_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    with pytest.raises(ModelInfoError, match="lacks the sizes"):
        inspect_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(config()))
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ModelInfoError, match="header length"):
        inspect_model(str(tmp_path))
