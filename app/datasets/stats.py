"""What a registered dataset looks like: preview rows, token lengths, the MLX export.

Token lengths need the model's tokenizer; workers/tools/dataset_tool.py computes them in a
subprocess (the `tokenizers` library and the chat template), so the server stays light.
The MLX export is the seed guide's recipe: the desirable rows only (a KTO dataset) or all
rows (SFT), split reproducibly into train.jsonl and valid.jsonl (workers/mlx/data.py, the
same split the MLX worker makes), as mlx-lm chat rows or the seed's "User:/Assistant:" text.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.config import Settings
from app.datasets.cache import evict, single_flight, touch
from app.datasets.formats import Analysis, _one_row
from app.datasets.readers import read_rows
from app.datasets.registry import dataset_dir, hub_snapshot
from app.db import ROOT
from app.errors import JobInputError
from app.models import DatasetEntry, ModelEntry
from app.paths import local_path
from contract.model_ref import HUB_ID
from contract.rows import DatasetError
from contract.sft_rows import load_sft_rows, split_rows
from contract.token_lengths import summarize

PREVIEW_ROWS = 20


def preview(entry: DatasetEntry, limit: int = PREVIEW_ROWS,
            python: str | None = None) -> list[dict[str, Any]]:
    """The first rows as the workers will see them: {row, prompt, completion, label} for
    KTO, {row, text} or {row, messages} for SFT. Rows that fail are shown with the problem."""
    out: list[dict[str, Any]] = []
    analysis = Analysis()
    # Row numbers as the person knows them: from the original where it is cheap to read
    # (a pair's two rows both say its row); Parquet would need the subprocess, so not there.
    source = Path(entry.original_path or entry.path)
    if source.suffix.lower() not in (".jsonl", ".json", ".csv") or not source.is_file():
        source = Path(entry.path)
    for number, raw, problem in itertools.islice(read_rows(source, python), limit):
        if problem is None:
            try:
                rows = _one_row(analysis, number, raw)
            except DatasetError as exc:
                problem = exc.message
        if problem is not None:
            out.append({"row": number, "problem": problem})
            continue
        out.extend({"row": number, **row} for row in rows)
    return out[:limit]


def tokenizer_folder(session: Session, value: str, settings: Settings) -> Path:
    """A registered model id, a local model folder, or a hub model in the local cache."""
    value = value.strip()
    entry = session.get(ModelEntry, value) if value else None
    if entry is not None:
        folder = Path(entry.path)
    elif value.startswith(("/", "~")):
        folder = local_path(value, settings, "model")
    elif HUB_ID.match(value):
        folder = hub_snapshot(value, "models")
        if folder is None:
            raise JobInputError("model", f"{value} is not in the Hugging Face cache; use a "
                                "registered model or a local folder", status_code=404)
    else:
        raise JobInputError("model", "choose a model: a registered id (tiny-demo), a local "
                            "folder or a cached hub id")
    if not (folder / "tokenizer.json").is_file():
        raise JobInputError("model", f"{folder} has no tokenizer.json (a fast tokenizer); "
                            "save the tokenizer with save_pretrained into the model folder")
    return folder


def token_lengths(entry: DatasetEntry, folder: Path, max_length: int,
                  settings: Settings) -> dict[str, Any]:
    """Counted once per (dataset, tokenizer) in the subprocess, which leaves every row's
    lengths in datasets/<id>/; any other max length is then a sum over that file."""
    stamp = "|".join(f"{f}:{f.stat().st_mtime_ns}" for f in sorted(folder.glob("*.json*"))
                     if f.name in ("tokenizer.json", "tokenizer_config.json",
                                   "chat_template.jinja"))
    key = hashlib.sha256(f"{folder.resolve()}|{stamp}|{entry.path}".encode()).hexdigest()[:16]
    cache = dataset_dir(settings, entry.id) / f"tokens-{key}.json"
    with single_flight(str(cache)):  # identical requests at once: one subprocess
        result = _count_tokens(entry, folder, max_length, settings, cache)
    evict(settings, "tokens-*.json", settings.token_cache_entries, cache)
    return result


def _count_tokens(entry: DatasetEntry, folder: Path, max_length: int, settings: Settings,
                  cache: Path) -> dict[str, Any]:
    if cache.is_file():
        with contextlib.suppress(ValueError, KeyError, OSError):
            result = summarize(json.loads(cache.read_text()), max_length)
            touch(cache)
            return result
    cache.parent.mkdir(parents=True, exist_ok=True)
    # The tool writes <out>.partial and renames it to <out>; a name of our own per run, so
    # no other request or server ever writes the same file.
    out = cache.with_name(f".{cache.stem}-{secrets.token_hex(6)}.json")
    cmd = [settings.python or sys.executable, "-m", "workers.tools.dataset_tool", "tokens",
           "--tokenizer", str(folder), "--data", entry.path, "--kind", entry.kind,
           "--max-length", str(max_length), "--lengths-out", str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 and out.is_file():
            os.replace(out, cache)
    except subprocess.TimeoutExpired:
        raise JobInputError("model", "counting tokens took over 10 minutes; try a smaller "
                            "dataset, or count with a script") from None
    finally:
        for leftover in (out, out.with_name(out.name + ".partial")):
            with contextlib.suppress(OSError):
                leftover.unlink()
    lines = proc.stdout.strip().splitlines() or [json.dumps({"error": proc.stderr[-500:]})]
    try:
        result = json.loads(lines[-1])
    except ValueError:
        result = {"error": lines[-1][-500:]}
    if proc.returncode != 0 or "error" in result:
        raise JobInputError("model", f"could not count tokens with {folder.name}: "
                            f"{result.get('error', 'unknown error')}")
    return result


def as_text(row: dict) -> dict:
    """The seed guide's MLX text row: "User: …\\nAssistant: …"."""
    if "text" in row:
        return row
    return {"text": "\n".join(f"{m['role'].capitalize()}: {m['content']}"
                              for m in row["messages"])}


def mlx_export(entry: DatasetEntry, settings: Settings, seed: int, style: str) -> Path:
    """train.jsonl and valid.jsonl (and a zip of both) in datasets/<id>/mlx-<style>-<seed>/;
    made once per (style, seed): the split is reproducible. At most
    PROSPECT_EXPORT_CACHE_ENTRIES such folders stay, the least recently used removed."""
    folder = dataset_dir(settings, entry.id) / f"mlx-{style}-{seed}"
    with single_flight(str(folder)):  # six identical requests at once: made once
        if (folder / "mlx.zip").is_file():
            touch(folder)
        else:
            _write_export(entry, folder, seed, style)
    evict(settings, "mlx-*", settings.export_cache_entries, folder)
    return folder


def _write_export(entry: DatasetEntry, folder: Path, seed: int, style: str) -> None:
    """Made whole in a folder of its own (a unique name) and renamed into place, so no
    reader ever sees half an export and no two writers share a file."""
    try:
        rows, _ = load_sft_rows(entry.path)
    except DatasetError as exc:
        raise JobInputError("dataset", f"{entry.id} cannot become MLX data: {exc}") from None
    train, valid = split_rows(rows, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for split, part in (("train", train), ("valid", valid)):
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for row in part:
                    f.write(json.dumps(as_text(row) if style == "text" else row,
                                       ensure_ascii=False) + "\n")
        with zipfile.ZipFile(tmp / "mlx.zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.write(tmp / "train.jsonl", f"{entry.id}/train.jsonl")
            z.write(tmp / "valid.jsonl", f"{entry.id}/valid.jsonl")
        if folder.is_dir():  # half an export from before (a crash): made again
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another server made it meanwhile: theirs is as good
            if not (folder / "mlx.zip").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
