"""What a dataset file is, whether every row is usable, and the one format workers read.

``analyze`` reads rows (app/datasets/readers.py), decides the dataset's kind from the first
row whose shape it knows, checks every row, writes the normalised rows to ``out`` and counts:

- KTO, unpaired   {"prompt", "completion", "label"}, text or message lists
- KTO, chat       {"messages": [..., assistant], "label"} (the last turn is the completion)
- paired          {"prompt", "chosen", "rejected"}: one desirable and one undesirable row each
- SFT             {"text"}, {"prompt", "completion"} or {"messages"}

KTO rows come out as contract/rows.py's conversational unpaired rows, SFT rows as mlx-lm's
{"text"} or {"messages"}: the workers keep reading one format (load_kto_dataset,
load_sft_rows). Problems carry their row number; the first MAX_SHOWN are kept, all are counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app.datasets.readers import ReadError, read_rows
from contract.rows import (
    PROBLEM_KEY,
    DatasetError,
    chat_messages,
    completion_messages,
    normalize_row,
    prompt_messages,
)

MAX_SHOWN = 50
KTO_SHAPES = ("kto", "kto-conversational", "paired")
SHAPE_HELP = ("a KTO row needs prompt, completion and label; a paired row prompt, chosen and "
              "rejected; an SFT row text, prompt and completion, or messages")


@dataclass
class Analysis:
    kind: str | None = None  # kto or sft, from the first row with a known shape
    source_rows: int = 0
    rows: int = 0
    desirable: int = 0
    undesirable: int = 0
    shapes: Counter = field(default_factory=Counter)
    problems: list[dict] = field(default_factory=list)
    problem_count: int = 0
    _sft_first: str | None = None

    def problem(self, row: int | None, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_SHOWN:
            self.problems.append({"row": row, "message": message})

    @property
    def format(self) -> str:
        if not self.shapes:
            return "unknown"
        if len(self.shapes) > 1 and self.kind == "kto":
            return "mixed"
        return self.shapes.most_common(1)[0][0]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "format": self.format,
                               "source_rows": self.source_rows, "rows": self.rows,
                               "shapes": dict(self.shapes)}
        if self.kind == "kto":
            out.update(kto_balance(self.desirable, self.undesirable))
        return out


def _ceil3(x: float) -> float:
    return math.ceil(x * 1000 - 1e-9) / 1000


def kto_balance(desirable: int, undesirable: int) -> dict[str, Any]:
    """Counts, their ratio, and λD / λU that bring λD·nD / (λU·nU) into the paper's [1, 4/3]
    (Ethayarajh et al. 2024, §4; docs/design.md). Already inside: 1 and 1. Too few desirable rows:
    λD rises to nU/nD (ratio 1). Too many: λU rises to ¾·nD/nU (ratio 4/3). Rounded up to
    three decimals, which keeps the ratio inside."""
    d_w = u_w = 1.0
    ratio = desirable / undesirable if undesirable else None
    if desirable and undesirable:
        if ratio < 1:
            d_w = _ceil3(undesirable / desirable)
        elif ratio > 4 / 3:
            u_w = _ceil3(0.75 * desirable / undesirable)
    weighted = d_w * desirable / (u_w * undesirable) if desirable and undesirable else None
    return {"desirable": desirable, "undesirable": undesirable,
            "ratio": round(ratio, 4) if ratio is not None else None,
            "desirable_weight": d_w, "undesirable_weight": u_w,
            "weighted_ratio": round(weighted, 4) if weighted is not None else None}


def row_shape(raw: dict) -> str | None:
    if "chosen" in raw or "rejected" in raw:
        return "paired"
    if "label" in raw:
        conversational = isinstance(raw.get("prompt"), list) or "messages" in raw
        return "kto-conversational" if conversational else "kto"
    if "messages" in raw:
        return "sft-messages"
    if "prompt" in raw or "completion" in raw:
        return "sft-prompt-completion"
    if "text" in raw:
        return "sft-text"
    return None


def _kto_rows(raw: dict, number: int) -> list[dict]:
    if "messages" in raw and "prompt" not in raw:
        messages = raw["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise DatasetError("messages must list the prompt turns and the assistant's "
                               "reply last", row=number)
        raw = {"prompt": messages[:-1], "completion": messages[-1:], "label": raw["label"]}
    return normalize_row(raw, number)


def _sft_row(raw: dict, shape: str, number: int) -> dict:
    if shape == "sft-text":
        if not isinstance(raw["text"], str) or not raw["text"].strip():
            raise DatasetError("text must be non-empty text", row=number)
        return {"text": raw["text"]}
    if shape == "sft-prompt-completion":
        missing = [k for k in ("prompt", "completion") if k not in raw]
        if missing:
            raise DatasetError(f"missing {missing[0]}; {SHAPE_HELP}", row=number)
        return {"messages": prompt_messages(raw["prompt"], number)
                + completion_messages(raw["completion"], number, "completion")}
    messages = chat_messages(raw["messages"], number, "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError("messages has no assistant turn: nothing to learn from", row=number)
    return {"messages": messages}


def _check_text(rows: list[dict], number: int) -> None:
    """Every message non-empty where it must be, and valid Unicode (no lone surrogates,
    which JSON escapes can carry but UTF-8 cannot)."""
    for row in rows:
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetError("holds text that is not valid Unicode (a lone surrogate "
                               "escape such as \\ud800); save the text as UTF-8",
                               row=number) from None
        for part in ("prompt", "messages"):
            for m in row.get(part, []):
                if m["role"] == "user" and not m["content"].strip():
                    raise DatasetError(f"{part} has an empty user message", row=number)


def _one_row(analysis: Analysis, number: int, raw: Any) -> list[dict]:
    if not isinstance(raw, dict):
        raise DatasetError(f"expected an object with named fields, got "
                           f"{'null' if raw is None else type(raw).__name__}", row=number)
    if PROBLEM_KEY in raw:
        raise DatasetError(str(raw[PROBLEM_KEY]), row=number)
    shape = row_shape(raw)
    if shape is None:
        keys = ", ".join(sorted(map(str, raw))[:8]) or "no fields"
        raise DatasetError(f"no known fields ({keys}); {SHAPE_HELP}", row=number)
    kind = "kto" if shape in KTO_SHAPES else "sft"
    analysis.kind = analysis.kind or kind
    if kind != analysis.kind:
        if analysis.kind == "kto":
            raise DatasetError("has no label (nor chosen and rejected) in a KTO dataset; "
                               "add label true or false", row=number)
        raise DatasetError("is a KTO row (label, or chosen and rejected) in an SFT dataset; "
                           "keep one kind of row per file", row=number)
    if kind == "kto":
        rows = _kto_rows(raw, number)
    else:
        rows = [_sft_row(raw, shape, number)]
        first = analysis._sft_first = analysis._sft_first or next(iter(rows[0]))
        if first not in rows[0]:  # text rows and chat rows cannot share a file for mlx-lm
            raise DatasetError(f"is {shape} but the first row is "
                               f"{'sft-text' if first == 'text' else 'chat'}; mlx-lm needs "
                               "one shape per file", row=number)
    _check_text(rows, number)
    analysis.shapes[shape] += 1
    return rows


def analyze(paths: list[Path], out: IO[str] | None = None,
            python: str | None = None) -> Analysis:
    """Check every row of the files (read in order, as one dataset) and write the
    normalised rows to ``out``. Never raises on the files' content."""
    analysis = Analysis()
    offset = 0
    for path in paths:
        last = 0
        try:
            for number, raw, problem in read_rows(path, python):
                if number is not None:
                    last = number
                    number += offset
                    analysis.source_rows += 1
                if problem is not None:
                    analysis.problem(number, problem)
                    continue
                try:
                    rows = _one_row(analysis, number, raw)
                except DatasetError as exc:
                    analysis.problem(number, exc.message)
                    continue
                for row in rows:
                    analysis.rows += 1
                    if analysis.kind == "kto":
                        analysis.desirable += row["label"]
                        analysis.undesirable += not row["label"]
                    if out is not None:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        except ReadError as exc:
            analysis.problem(None, str(exc))
        except (OSError, MemoryError) as exc:
            analysis.problem(None, f"cannot read {path.name}: {exc}")
        offset += last
    _whole_file_checks(analysis)
    return analysis


def _whole_file_checks(analysis: Analysis) -> None:
    if analysis.problem_count:
        return
    if not analysis.rows:
        analysis.problem(None, "the file holds no rows")
    elif analysis.kind == "kto" and not (analysis.desirable and analysis.undesirable):
        analysis.problem(None, f"{analysis.desirable} desirable and {analysis.undesirable} "
                         "undesirable rows; KTO needs both labels (label true and label "
                         "false). For SFT on these rows, drop the label field")
