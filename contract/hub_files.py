"""Which of a hub repo's files a model needs: its config, tokenizer and weights, once.

The server picks them from the hub's file list before a download starts (to size it), and
the download worker fetches exactly those (``allow_patterns``). Weights: the safetensors
files; ``.bin`` only where a repo has no safetensors. Never the duplicate copies repos carry
beside them (``.pth``, ``.gguf``, ``.onnx``, ``.msgpack``, ``.h5``, TF/Flax/ONNX/OpenVINO
folders, ``original/``), nor code (``*.py``: it would run only with trust_remote_code, which
Prospect never sets). Top-level files only: transformers and mlx-lm load from there.
"""

from __future__ import annotations

from fnmatch import fnmatch

TEXT_FILES = ("*.json", "*.jinja", "tokenizer.model", "*.tiktoken", "vocab.txt", "merges.txt",
              "*.model")
WEIGHTS = ("*.safetensors",)
FALLBACK_WEIGHTS = ("pytorch_model*.bin", "model*.bin")
NOT_NEEDED_WITH_SAFETENSORS = ("pytorch_model*.bin.index.json", "tf_model*", "flax_model*")


class NoWeights(ValueError):  # noqa: N818 - a refusal, read by the server and the worker
    """The repo has no weights in a format Prospect loads (safetensors or .bin)."""


def pick_files(names: list[str]) -> list[str]:
    """The files to download, in the repo's order; NoWeights when none are weights."""
    top = [n for n in names if "/" not in n]
    has_safetensors = any(_match(n, WEIGHTS) for n in top)
    weights = WEIGHTS if has_safetensors else FALLBACK_WEIGHTS
    picked = []
    for name in top:
        if has_safetensors and _match(name, NOT_NEEDED_WITH_SAFETENSORS):
            continue
        if _match(name, weights) or _match(name, TEXT_FILES):
            picked.append(name)
    if not any(_match(n, weights) for n in picked):
        found = sorted({n.rsplit(".", 1)[-1] for n in names if "." in n})
        raise NoWeights("no weights Prospect can load (.safetensors, or .bin where a repo has "
                        f"no safetensors); the repo has: {', '.join(found) or 'no files'}")
    if not any(n == "config.json" for n in picked):
        raise NoWeights("no config.json at the repo's top level: not a transformers or MLX "
                        "model folder")
    return picked


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(name, p) for p in patterns)
