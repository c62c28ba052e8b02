"""SFT datasets as mlx-lm reads them (both sides: the server checks them, the MLX worker trains).

SFT accepts a .jsonl (or .json list) file whose rows are all one of mlx-lm's shapes:
``{"text"}``, ``{"prompt", "completion"}`` (strings) or ``{"messages": [...]}``. A KTO file
(``label`` or ``chosen``/``rejected`` rows) is converted as the seed guide describes: the
desirable rows only, each as a chat ``{"messages": prompt + completion}``, because mlx-lm's
CompletionsDataset wants plain strings and KTO prompts may be conversations.

A file named ``train.jsonl`` with a ``valid.jsonl`` beside it uses that as the validation split
(mlx-lm's folder layout); any other file is split 90/10, reproducibly from the seed (a file
of fewer than 10 rows has no validation split).

Plain Python: the server imports this to check an SFT dataset before a job starts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from contract.rows import (
    DatasetError,
    completion_messages,
    load_kto_dataset,
    prompt_messages,
    read_raw_rows,
)

SFT_SHAPES = ("text", "prompt/completion", "messages")
VALID_FRACTION = 0.1


def is_kto_row(raw: Any) -> bool:
    return isinstance(raw, dict) and ("label" in raw or "chosen" in raw or "rejected" in raw)


def _read(path: Path) -> list[tuple[int, Any]]:
    rows = read_raw_rows(path)
    if not rows:
        raise DatasetError(f"{path.name} holds no rows", path=path)
    return rows


def _shape(raw: Any, number: int) -> str:
    if not isinstance(raw, dict):
        raise DatasetError(f"expected a JSON object, got {type(raw).__name__}", row=number)
    if "prompt" in raw and "completion" in raw:
        if not isinstance(raw["prompt"], str) or not isinstance(raw["completion"], str):
            return "conversational prompt/completion"
        return "prompt/completion"
    if "messages" in raw:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
            for m in messages
        ):
            raise DatasetError("messages must be a non-empty list of {role, content}", row=number)
        return "messages"
    if "text" in raw:
        if not isinstance(raw["text"], str) or not raw["text"]:
            raise DatasetError("text must be a non-empty string", row=number)
        return "text"
    raise DatasetError(
        "an SFT row needs text, prompt and completion, or messages (or a KTO row with "
        "prompt, completion and label)",
        row=number,
    )


def _as_messages(raw: dict, number: int) -> dict:
    """A prompt/completion row as one chat conversation, for mlx-lm's ChatDataset (its
    CompletionsDataset wants plain strings)."""
    prompt = prompt_messages(raw["prompt"], number)
    return {"messages": prompt + completion_messages(raw["completion"], number, "completion")}


def load_sft_rows(path: Path | str) -> tuple[list[dict], dict[str, Any]]:
    """All rows of an SFT dataset in one mlx-lm shape, and a description of what was read."""
    path = Path(path)
    raw_rows = _read(path)
    if is_kto_row(raw_rows[0][1]):
        rows = load_kto_dataset(path)
        kept = [{"messages": r["prompt"] + r["completion"]} for r in rows if r["label"]]
        if not kept:
            raise DatasetError(f"{path.name} is a KTO dataset without desirable rows; SFT "
                               "trains on the desirable (label true) rows only", path=path)
        info = {"format": "kto", "rows": len(rows), "kept": len(kept),
                "dropped_undesirable": len(rows) - len(kept)}
        return kept, info
    shapes = [(number, raw, _shape(raw, number)) for number, raw in raw_rows]
    first = shapes[0][2].replace("conversational ", "")
    for number, _, shape in shapes:
        if shape.replace("conversational ", "") != first:
            raise DatasetError(f"this row is {shape} but the first row is {first}; mlx-lm "
                               "needs every row in one shape", row=number)
    if first == "prompt/completion" and any(s.startswith("conv") for _, _, s in shapes):
        # Some prompts are conversations: every row becomes a chat conversation.
        out = [_as_messages(raw, number) for number, raw, _ in shapes]
    elif first == "prompt/completion":
        out = [{"prompt": raw["prompt"], "completion": raw["completion"]} for _, raw, _ in shapes]
    else:
        out = [{first: raw[first]} for _, raw, _ in shapes]
    shape = "messages" if "messages" in out[0] else first
    return out, {"format": shape, "rows": len(out), "kept": len(out)}


def split_rows(rows: list, seed: int, fraction: float = VALID_FRACTION) -> tuple[list, list]:
    """A reproducible train/valid split: shuffled by ``seed``, ``fraction`` to valid."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_valid = int(round(len(rows) * fraction)) if len(rows) >= 10 else 0
    valid = [rows[i] for i in sorted(order[:n_valid])]
    train = [rows[i] for i in sorted(order[n_valid:])]
    return train, valid


def load_sft_splits(path: Path | str, seed: int) -> tuple[list[dict], list[dict], dict]:
    path = Path(path)
    rows, info = load_sft_rows(path)
    sibling = path.with_name("valid.jsonl")
    if path.name == "train.jsonl" and sibling.is_file():
        valid, _ = load_sft_rows(sibling)
        info["split"] = "valid.jsonl"
        return rows, valid, info
    train, valid = split_rows(rows, seed)
    info["split"] = f"{len(train)} train / {len(valid)} valid, by seed {seed}"
    return train, valid, info
