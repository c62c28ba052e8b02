"""Loading KTO datasets: one format in, one format out, clear errors for the rows that are wrong.

Accepted, in a JSONL file or a JSON list (both may mix the shapes row by row):
- unpaired rows ``{"prompt", "completion", "label"}``, the shape KTO trains on;
- paired rows ``{"prompt", "chosen", "rejected"}``, split into a desirable and an undesirable row;
- prompts and completions as plain strings or as chat messages ``[{"role", "content"}, ...]``.

Every row comes out conversational (prompt = list of messages, completion = one assistant
message) so the trainer renders all of them through the model's chat template, as mlx-lm does.
Plain Python on purpose: the server imports this to check an upload without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROBLEM_KEY = "__prospect_problem__"  # a row the dataset tool could not turn into JSON
ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, str]
Row = dict[str, Any]  # {"prompt": list[Message], "completion": list[Message], "label": bool}


class DatasetError(ValueError):
    """A dataset that cannot be used; ``row`` is the 1-based row (JSONL: line) at fault."""

    def __init__(self, message: str, row: int | None = None, path: Path | str | None = None):
        where = f"row {row}: " if row is not None else ""
        super().__init__(f"{where}{message}")
        self.row = row
        self.path = str(path) if path is not None else None
        self.message = message


def load_kto_dataset(path: Path | str) -> list[Row]:
    """Read a .jsonl or .json file and return its rows in the conversational KTO shape."""
    path = Path(path)
    rows = []
    for number, raw in read_raw_rows(path):
        rows.extend(normalize_row(raw, number))
    if not rows:
        raise DatasetError(f"{path.name} holds no rows", path=path)
    return rows


def read_raw_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number, parsed object) pairs of a .jsonl or .json file; errors name the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"no dataset file at {path}", path=path) from None
    except IsADirectoryError:
        raise DatasetError(f"{path} is a folder; give a .jsonl or .json file", path=path) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason})", path=path) from None
    return _raw_rows(text, path)


def _raw_rows(text: str, path: Path) -> list[tuple[int, Any]]:
    """(row number, parsed object) pairs: a JSON list, or one JSON object per line."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path=path
            ) from None
        except RecursionError:
            raise DatasetError("JSON nested too deeply to read", path=path) from None
        return list(enumerate(data, start=1))
    out = []
    # JSONL lines end in \n only: splitlines() would also split at U+2028 inside a string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not valid JSON ({exc.msg})", row=number, path=path) from None
        except RecursionError:
            raise DatasetError("JSON nested too deeply to read", row=number, path=path) from None
    return out


def normalize_row(raw: Any, number: int) -> list[Row]:
    """One input row → one unpaired row (or two, for a chosen/rejected pair)."""
    if not isinstance(raw, dict):
        raise DatasetError(f"expected a JSON object, got {type(raw).__name__}", row=number)
    if "chosen" in raw or "rejected" in raw:
        return _unpair(raw, number)
    missing = [k for k in ("prompt", "completion", "label") if k not in raw]
    if missing:
        raise DatasetError(
            f"missing {', '.join(missing)}; a KTO row needs prompt, completion and label "
            "(or prompt, chosen and rejected)",
            row=number,
        )
    return [
        {
            "prompt": prompt_messages(raw["prompt"], number),
            "completion": completion_messages(raw["completion"], number, "completion"),
            "label": _label(raw["label"], number),
        }
    ]


def _unpair(raw: dict, number: int) -> list[Row]:
    missing = [k for k in ("chosen", "rejected") if k not in raw]
    if missing:
        raise DatasetError(
            f"a paired row needs both chosen and rejected; missing {missing[0]}", row=number
        )
    chosen, rejected = raw["chosen"], raw["rejected"]
    if "prompt" in raw:
        prompt = prompt_messages(raw["prompt"], number)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        # Implicit prompt: both conversations share it; the completions are what follows.
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt = prompt_messages(chosen[:shared], number)
        chosen, rejected = chosen[shared:], rejected[shared:]
    else:
        raise DatasetError("a paired row needs a prompt", row=number)
    return [
        {"prompt": prompt, "completion": completion_messages(chosen, number, "chosen"),
         "label": True},
        {"prompt": prompt, "completion": completion_messages(rejected, number, "rejected"),
         "label": False},
    ]


def prompt_messages(value: Any, number: int) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise DatasetError("prompt is empty", row=number)
        return [{"role": "user", "content": value}]
    messages = chat_messages(value, number, "prompt")
    if messages[-1]["role"] == "assistant":
        raise DatasetError(
            "prompt ends with an assistant message; the completion is the "
            "assistant's reply, so the prompt should end with a user turn",
            row=number,
        )
    return messages


def completion_messages(value: Any, number: int, field: str) -> list[Message]:
    if isinstance(value, str):
        if not value:
            raise DatasetError(f"{field} is empty", row=number)
        return [{"role": "assistant", "content": value}]
    messages = chat_messages(value, number, field)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise DatasetError(f"{field} must be one assistant message, got [{roles}]", row=number)
    return messages


def chat_messages(value: Any, number: int, field: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DatasetError(
            f"{field} must be text or a non-empty list of {{role, content}} messages, "
            f"got {_describe(value)}",
            row=number,
        )
    out = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise DatasetError(
                f"{field} message {i} must be an object with role and content", row=number
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DatasetError(
                f"{field} message {i} has role {role!r}; use one of {', '.join(ROLES)}",
                row=number,
            )
        if not isinstance(content, str):
            raise DatasetError(
                f"{field} message {i} needs text content, got {_describe(content)}", row=number
            )
        out.append({"role": role, "content": content})  # other keys are dropped on purpose
    return out


def _label(value: Any, number: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DatasetError(
        f"label must be true (desirable) or false (undesirable), got {value!r}", row=number
    )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__


def kto_stats(rows: list[Row]) -> dict[str, Any]:
    """Counts of desirable and undesirable rows, and whether the KTO weights need a nudge.

    The KTO paper asks for λD·nD / (λU·nU) in [1, 4/3]; ``desirable_weight_range`` is the
    range of λD that satisfies it with λU = 1 (None when a side is empty).
    """
    desirable = sum(1 for row in rows if row["label"])
    undesirable = len(rows) - desirable
    weight_range = None
    if desirable and undesirable:
        low = undesirable / desirable
        weight_range = (round(low, 3), round(low * 4 / 3, 3))
    return {
        "rows": len(rows),
        "desirable": desirable,
        "undesirable": undesirable,
        "desirable_weight_range": weight_range,
    }
