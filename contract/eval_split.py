"""The held-out evaluation split of a KTO run: one seeded rule both backends use, and the file
that records it (``<run_dir>/eval_split.jsonl``) so the arena can use exactly those prompts.

The split is stratified by label, so a small held-out set still has desirable and undesirable
rows when the data has both: ``round(n_label * fraction)`` of each label (at least one when
the fraction is above 0 and the label has two rows or more), chosen with ``random.Random(seed)``.
Rows keep their original order on both sides. Plain Python: the server reads the file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

EVAL_SPLIT_FILE = "eval_split.jsonl"  # one JSON row per held-out row, with its "index"


def split_indices(labels: list[bool], fraction: float, seed: int) -> list[int]:
    """The indices (ascending) of the rows held out for evaluation."""
    if fraction <= 0:
        return []
    rng = random.Random(seed)
    held: list[int] = []
    for label in (True, False):
        group = [i for i, value in enumerate(labels) if bool(value) == label]
        count = round(len(group) * fraction)
        if count == 0 and len(group) >= 2:
            count = 1
        held.extend(rng.sample(group, min(count, len(group) - 1 if len(group) > 1 else 0)))
    return sorted(held)


def split_rows(rows: list[dict[str, Any]], fraction: float,
               seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """(train rows, held-out rows, held-out indices) of ``rows`` (KTO rows with "label")."""
    held = split_indices([bool(r["label"]) for r in rows], fraction, seed)
    chosen = set(held)
    train = [r for i, r in enumerate(rows) if i not in chosen]
    return train, [rows[i] for i in held], held


def write_split(run_dir: Path, rows: list[dict[str, Any]], indices: list[int]) -> Path:
    """Record the held-out rows (with their index in the dataset) in the run folder."""
    path = Path(run_dir) / EVAL_SPLIT_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for index, row in zip(indices, rows, strict=True):
            f.write(json.dumps({"index": index, **row}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_split(run_dir: Path) -> list[dict[str, Any]]:
    """The held-out rows a run recorded; [] when it held none out."""
    path = Path(run_dir) / EVAL_SPLIT_FILE
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
