"""What names a model: an absolute folder, or a hub id (org/name) checked by the hub's own rules.

The server checks a job's model with these before it is queued; a worker resolves it with
workers/model_source.py, which uses the same checks."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
# What a model needs from its repo (mlx-lm downloads the same set): config, tokenizer, weights.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt",
                  "*.jsonl", "*.py"]


def hub_id_problem(value: str) -> str | None:
    """Why ``value`` is not a hub id (org/name), or None when it is one.

    The hub's own rules, those that matter for safety: letters, digits, '-', '_', '.';
    no '..', and neither part may start or end with '.' or '-' (so no '.' or '..' part)."""
    if not HUB_ID.match(value):
        return "a hub id is org/name in letters, digits, '-', '_' and '.'"
    for part in value.split("/"):
        if ".." in part or part.startswith((".", "-")) or part.endswith((".", "-")):
            return (f"{part!r}: a hub id's parts may not contain '..' nor start or end with "
                    "'.' or '-'")
    return None


def is_folder_path(value: str) -> bool:
    """An absolute folder path (or ~/…); anything else is taken as a hub id."""
    return value.startswith(("/", "~"))
