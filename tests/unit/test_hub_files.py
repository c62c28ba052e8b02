"""contract/hub_files.py: which of a hub repo's files a model needs (listings shaped like real
repos: a transformers repo with every format, a .bin-only one, an MLX one, a GGUF-only one)."""

from __future__ import annotations

import pytest

from contract.hub_files import NoWeights, pick_files

LLAMA = [".gitattributes", "LICENSE.txt", "README.md", "USE_POLICY.md", "config.json",
         "generation_config.json", "model-00001-of-00002.safetensors",
         "model-00002-of-00002.safetensors", "model.safetensors.index.json",
         "original/consolidated.00.pth", "original/params.json", "original/tokenizer.model",
         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
GPT2 = [".gitattributes", "64-8bits.tflite", "README.md", "config.json", "flax_model.msgpack",
        "generation_config.json", "merges.txt", "model.safetensors", "onnx/decoder_model.onnx",
        "pytorch_model.bin", "rust_model.ot", "tf_model.h5", "tokenizer.json", "vocab.json"]


def test_safetensors_and_what_loads_them_only():
    assert pick_files(LLAMA) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert pick_files(GPT2) == ["config.json", "generation_config.json", "merges.txt",
                                "model.safetensors", "tokenizer.json", "vocab.json"]


def test_bin_weights_where_there_are_no_safetensors():
    names = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
             "pytorch_model.bin.index.json", "tokenizer.model", "tokenizer_config.json",
             "modeling_custom.py"]
    assert pick_files(names) == ["config.json", "pytorch_model-00001-of-00002.bin",
                                 "pytorch_model-00002-of-00002.bin",
                                 "pytorch_model.bin.index.json", "tokenizer.model",
                                 "tokenizer_config.json"]  # no code: never trust_remote_code


def test_an_mlx_repo_keeps_its_weights_and_template():
    names = ["README.md", "chat_template.jinja", "config.json", "model.safetensors",
             "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    assert pick_files(names) == names[1:]


@pytest.mark.parametrize("names, says", [
    (["config.json", "model-q4_k_m.gguf", "README.md"], "gguf"),
    (["model.safetensors", "tokenizer.json"], "no config.json"),
    (["onnx/model.onnx", "config.json"], "onnx"),
    ([], "no files"),
])
def test_no_loadable_weights_is_refused_naming_what_is_there(names, says):
    with pytest.raises(NoWeights, match=says):
        pick_files(names)
