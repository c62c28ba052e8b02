"""A KTO dataset from feedback: the chosen rows as conversational KTO rows (the prompt's
messages, the answer as one assistant message, the label), optionally after the rows of an
existing KTO dataset, registered like an upload (app/datasets/registry.py checks every row,
writes datasets/<name>/, computes the stats and the λD / λU advice).

Nothing is written when no row matches (422), the merge dataset is unknown (404) or the name
is taken (409). The answer carries ``train_url``: the new-job form with this dataset, the
base model most rows rated, the adapter they rated (to start from) and the advised weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session

from app.config import Settings
from app.datasets import registry
from app.errors import JobInputError
from app.feedback.store import ANY, FeedbackFilter, kto_row, selected
from app.models import DatasetEntry, Feedback, Job
from contract.rows import DatasetError, load_kto_dataset

SOURCE = "feedback"  # DatasetEntry.source of a dataset made here


def merge_rows(session: Session, dataset_id: str) -> list[dict[str, Any]]:
    """The rows of a registered KTO dataset, conversational (contract/rows.py)."""
    entry = session.get(DatasetEntry, dataset_id)
    if entry is None:
        raise JobInputError("merge_with", f"dataset {dataset_id!r} does not exist; GET "
                            "/api/datasets lists them", status_code=404)
    if entry.kind != "kto":
        raise JobInputError("merge_with", f"dataset {dataset_id!r} is {entry.kind.upper()} "
                            "data (no labels); merge feedback with a KTO dataset")
    try:
        return load_kto_dataset(entry.path)
    except DatasetError as exc:
        raise JobInputError("merge_with", f"dataset {dataset_id!r} could not be read: "
                            f"{exc}") from None


def adapter_backend(session: Session, job_id: int | None, folder: str) -> str | None:
    """The backend an adapter was trained with: its run's, or what its folder holds (mlx-lm
    saves adapters.safetensors, PEFT adapter_model.safetensors)."""
    job = session.get(Job, job_id) if job_id is not None else None
    if job is not None:
        return job.backend
    if folder and (Path(folder) / "adapters.safetensors").is_file():
        return "mlx"
    return "torch" if folder else None


def train_url(entry: DatasetEntry, rows: list[Feedback], session: Session | None = None) -> str:
    """/jobs/new with the dataset, the base model and adapter most rows rated (and that
    adapter's backend, so an MLX adapter opens the MLX form), and the advisor's KTO
    weights."""
    query: dict[str, Any] = {"dataset": entry.id}
    models = Counter(r.model for r in rows)
    if models:
        base = models.most_common(1)[0][0]
        query["model"] = base
        adapters = Counter((r.job_id, r.adapter) for r in rows
                           if r.model == base and (r.job_id is not None or r.adapter))
        if adapters:
            job_id, folder = adapters.most_common(1)[0][0]
            query["init_adapter"] = str(job_id) if job_id is not None else folder
            backend = adapter_backend(session, job_id, folder) if session else None
            if backend == "mlx":
                query["backend"] = "mlx"
    stats = entry.stats or {}
    for key in ("desirable_weight", "undesirable_weight"):
        if stats.get(key) is not None:
            query[key] = stats[key]
    return "/jobs/new?" + urlencode(query)


def make_dataset(session: Session, settings: Settings, name: str,
                 ids: list[int] | None = None, flt: FeedbackFilter = ANY,
                 merge_with: str | None = None) -> tuple[DatasetEntry, str]:
    """Register the dataset; (its entry, the train_url). Blocking: call it in a thread."""
    name = registry.check_name(session, name.strip())
    chosen = selected(session, ids, flt)
    if not chosen:
        what = f"the ids {ids}" if ids is not None else f"the filters ({flt.describe()})"
        raise JobInputError("ids" if ids is not None else "filters",
                            f"no feedback matches {what}, so no dataset was made: rate some "
                            "answers first, or widen the filters")
    rows = merge_rows(session, merge_with) if merge_with else []
    rows += [kto_row(r) for r in chosen]
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=settings.datasets_dir, prefix=".upload-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        entry = registry.register(session, settings, name, [Path(tmp)], source=SOURCE,
                                  shown=f"{name}.jsonl", upload=Path(tmp))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return entry, train_url(entry, chosen, session)


def dataset_json(entry: DatasetEntry, url: str) -> dict[str, Any]:
    """POST /api/datasets's JSON for the entry, and the train_url."""
    return {**entry.model_dump(mode="json"), "train_url": url}


__all__ = ["dataset_json", "make_dataset", "merge_rows", "train_url"]
