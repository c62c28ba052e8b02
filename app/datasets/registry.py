"""Registering datasets: from an upload, a local file, or the Hugging Face cache.

Each registered dataset gets a folder PROSPECT_HOME/datasets/<id>/ holding ``<id>.jsonl``,
the normalised rows the workers read (app/datasets/formats.py), and for an upload the
original file as sent (``original.<suffix>``). A local file or a cached hub dataset is read
where it is and not copied: ``original_path`` points at it. A file with any bad row is not
registered at all: the 422 lists its first problems with row numbers and counts them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.config import Settings
from app.datasets.formats import MAX_SHOWN, Analysis, analyze
from app.datasets.readers import SUFFIXES, suffix_of
from app.errors import JobInputError
from app.hub.inspect import hub_cache_dir
from app.models import DatasetEntry, Job, JobStatus
from app.paths import local_path
from contract.model_ref import HUB_ID

log = logging.getLogger("prospect")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ACTIVE = (JobStatus.queued, JobStatus.starting, JobStatus.running)
SUFFIX_TEXT = ".jsonl, .json, .csv or .parquet"


class DatasetRejected(HTTPException):
    """422 whose detail lists the rows at fault; nothing was registered."""

    def __init__(self, shown: str, analysis: Analysis):
        first = analysis.problems[0]
        where = f"row {first['row']}: " if first["row"] is not None else ""
        count = analysis.problem_count
        msg = (f"{shown}: {count} problem{'s' if count != 1 else ''} in "
               f"{analysis.source_rows} rows, so nothing was registered. First: {where}"
               f"{first['message']}. Fix the rows listed and add the file again.")
        super().__init__(422, detail=[{
            "loc": ["body", "file"], "field": "file", "msg": msg, "type": "value_error",
            "problems": analysis.problems, "problem_count": count,
            "shown": min(count, MAX_SHOWN)}])
        self.analysis = analysis


def name_from(text: str) -> str:
    """A dataset id made from a file name or hub id: 'My data (v2).csv' → 'My-data-v2'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).stem if "/" not in text
                  else text.rsplit("/", 1)[-1]).strip("-._")
    return (stem or "dataset")[:64]


def check_name(session: Session, name: str) -> str:
    if not NAME.match(name):
        raise JobInputError("name", "use letters, digits, '.', '_' or '-' (at most 64), "
                            "starting with a letter or digit")
    if session.get(DatasetEntry, name) is not None:
        raise JobInputError("name", f"a dataset named {name!r} exists; choose another name",
                            status_code=409)
    return name


def check_suffix(filename: str, field: str = "filename") -> str:
    suffix = suffix_of(filename)
    if suffix not in SUFFIXES:
        raise JobInputError(field, f"{filename!r}: use a {SUFFIX_TEXT} file")
    return suffix


def dataset_dir(settings: Settings, dataset_id: str) -> Path:
    return settings.datasets_dir / dataset_id


def register(session: Session, settings: Settings, name: str, files: list[Path], *,
             source: str, shown: str, original_path: str | None = None,
             upload: Path | None = None) -> DatasetEntry:
    """Check and normalise ``files`` into datasets/<name>/; register it or raise 422.

    ``upload`` (a temporary file in datasets/) is moved into the folder as the original."""
    folder = dataset_dir(settings, name)
    try:
        folder.mkdir()
    except FileExistsError:
        raise JobInputError("name", f"{folder} exists already; choose another name",
                            status_code=409) from None
    try:
        if upload is not None:
            original = folder / f"original{suffix_of(shown)}"
            os.replace(upload, original)
            files = [original]
        final = folder / f"{name}.jsonl"
        partial = folder / f".{name}.jsonl.partial"
        with open(partial, "w", encoding="utf-8") as out:
            analysis = analyze(files, out, python=settings.python)
        if analysis.problem_count:
            raise DatasetRejected(shown, analysis)
        os.replace(partial, final)
        entry = DatasetEntry(
            id=name, name=name, path=str(final), format=analysis.format,
            rows=analysis.rows, source=source, kind=analysis.kind or "kto",
            original_filename=Path(shown).name[:255], size_bytes=sum(
                f.stat().st_size for f in files),
            original_path=original_path or str(files[0]),
            stats=stored_stats(analysis))
        session.add(entry)
        session.commit()
        session.refresh(entry)
        return entry
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def stored_stats(analysis: Analysis) -> dict[str, Any]:
    return {**analysis.stats(), "problems": analysis.problems,
            "problem_count": analysis.problem_count}


def ensure_stats(session: Session, entry: DatasetEntry, settings: Settings) -> dict[str, Any]:
    """Stats of a dataset registered without them (the demo, or before migration 0003)."""
    if entry.stats is None:
        path = Path(entry.path)
        analysis = analyze([path], None, python=settings.python) if path.is_file() else None
        if analysis is None:
            return {"problems": [{"row": None, "message": f"the file {path} is missing"}],
                    "problem_count": 1}
        entry.stats = stored_stats(analysis)
        entry.kind = analysis.kind or entry.kind
        entry.format = analysis.format if analysis.kind else entry.format
        entry.size_bytes = path.stat().st_size
        session.add(entry)
        session.commit()
        session.refresh(entry)
    return entry.stats


# --- a local file --------------------------------------------------------------------------
def register_path(session: Session, settings: Settings, value: str,
                  name: str | None) -> DatasetEntry:
    path = local_path(value.strip(), settings, "path")
    if not path.is_file():
        raise JobInputError("path", f"{path} is not a file; give the path of a {SUFFIX_TEXT} "
                            "file")
    check_suffix(path.name, "path")
    name = check_name(session, name or name_from(path.name))
    return register(session, settings, name, [path], source="path", shown=path.name,
                    original_path=str(path))


# --- the Hugging Face cache ----------------------------------------------------------------
def hub_snapshot(repo_id: str, kind: str = "datasets") -> Path | None:
    """The cached snapshot of a hub repo: the one refs/main names, else the newest."""
    repo = hub_cache_dir() / f"{kind}--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    with contextlib.suppress(OSError):
        ref = (repo / "refs" / "main").read_text().strip()
        if ref and (snapshots / ref).is_dir():
            return snapshots / ref
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cached_hub_datasets(limit: int = 200) -> list[str]:
    """The dataset ids the local cache holds a snapshot of (for the form's suggestions)."""
    root = hub_cache_dir()
    with contextlib.suppress(OSError):
        found = sorted(p.name[len("datasets--"):].replace("--", "/", 1)
                       for p in root.iterdir()
                       if p.name.startswith("datasets--") and (p / "snapshots").is_dir())
        return found[:limit]
    return []


def hub_files(snapshot: Path, split: str) -> tuple[list[Path], list[str]]:
    """The split's data files (e.g. data/train-00000-of-00001.parquet, train.jsonl), and
    every data file the snapshot has, for the message when the split is not there."""
    every = sorted(p for p in snapshot.rglob("*") if p.suffix.lower() in SUFFIXES
                   and p.is_file() and "info" not in p.name.lower())
    names = [str(p.relative_to(snapshot)) for p in every]
    picked = [p for p, rel in zip(every, names, strict=True)
              if any(part == split or part.startswith((f"{split}-", f"{split}_", f"{split}."))
                     for part in Path(rel).parts)]
    return picked, names


def register_hub(session: Session, settings: Settings, repo_id: str, split: str,
                 name: str | None) -> DatasetEntry:
    repo_id = repo_id.strip()
    if not HUB_ID.match(repo_id):
        raise JobInputError("hub_id", f"{repo_id!r} is not a hub dataset id like "
                            "trl-lib/kto-mix-14k")
    if not re.match(r"^[A-Za-z0-9][\w.-]{0,63}$", split):
        raise JobInputError("split", f"{split!r} is not a split name like train or test")
    snapshot = hub_snapshot(repo_id)
    if snapshot is None:
        raise JobInputError("hub_id", f"{repo_id} is not in the Hugging Face cache "
                            f"({hub_cache_dir()}); Prospect never downloads. Fetch it once "
                            f"with `hf download {repo_id} --repo-type dataset` and add it "
                            "again", status_code=404)
    files, every = hub_files(snapshot, split)
    if not files:
        listed = ", ".join(every[:10]) or "no data files"
        raise JobInputError("split", f"{repo_id} has no {split!r} split in the cache "
                            f"(its files: {listed})", status_code=404)
    suffixes = {suffix_of(f.name) for f in files}
    if len(suffixes) > 1:
        raise JobInputError("split", f"{repo_id}'s {split} files mix {', '.join(suffixes)}")
    name = check_name(session, name or name_from(repo_id))
    return register(session, settings, name, files, source="hub",
                    shown=f"{repo_id} ({split})", original_path=str(snapshot))


# --- deleting --------------------------------------------------------------------------------
def delete(session: Session, settings: Settings, entry: DatasetEntry) -> None:
    """Remove the entry and what Prospect wrote for it; a local or cached original stays."""
    busy = session.exec(select(Job).where(Job.dataset_path == entry.path,
                                          Job.status.in_(ACTIVE))).first()
    if busy is not None:
        raise JobInputError("dataset", f"job {busy.id} ({busy.status.value}) trains on "
                            f"{entry.id}; cancel it or wait before deleting", status_code=409)
    folder = dataset_dir(settings, entry.id).resolve()
    path = Path(entry.path).resolve()
    session.delete(entry)
    session.commit()
    if folder.parent == settings.datasets_dir and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    if path.parent == settings.datasets_dir and path.is_file():
        path.unlink()  # a file registered before the per-dataset folders (the demo's)


# --- what a crash left -------------------------------------------------------------------
ORPHANS = ".orphaned"  # where folders without an entry are moved; hidden: never an id


def sweep_leftovers(engine: Engine, settings: Settings) -> None:
    """At start-up, before any request: a server killed mid-upload leaves datasets/.upload-*
    (and mid-export .mlx-*/.tokens-* temporaries); one killed while analysing leaves
    datasets/<name>/ without an entry, invisible, and every later upload of that name a 409.
    Temporaries are removed; such a folder is registered again when its normalised file was
    complete (the crash came between writing it and the database), else moved aside."""
    root = settings.datasets_dir
    if not root.is_dir():
        return
    temporaries = [*root.glob(".upload-*"), *root.glob("*/.mlx-*"), *root.glob("*/.tokens-*")]
    for tmp in temporaries:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
    if temporaries:
        log.warning("removed %d temporary file(s) a stopped server left in %s",
                    len(temporaries), root)
    with Session(engine) as session:
        known = set(session.exec(select(DatasetEntry.id)))
        for folder in sorted(root.iterdir()):
            if folder.name.startswith(".") or folder.name in known or not folder.is_dir() \
                    or folder.is_symlink():
                continue
            if not _adopt(session, settings, folder):
                _move_aside(root, folder)


def _adopt(session: Session, settings: Settings, folder: Path) -> bool:
    final = folder / f"{folder.name}.jsonl"
    if not NAME.match(folder.name) or not final.is_file():
        return False
    try:
        analysis = analyze([final], None, python=settings.python)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is moved aside
        log.exception("datasets/%s: could not read %s", folder.name, final.name)
        return False
    if analysis.problem_count or not analysis.rows:
        return False
    original = next((p for p in sorted(folder.glob("original.*")) if p.is_file()), final)
    session.add(DatasetEntry(
        id=folder.name, name=folder.name, path=str(final), format=analysis.format,
        rows=analysis.rows, source="upload" if original != final else "path",
        kind=analysis.kind or "kto", original_filename=original.name,
        original_path=str(original), size_bytes=original.stat().st_size,
        stats=stored_stats(analysis)))
    session.commit()
    log.warning("datasets/%s had no database entry (the server stopped while adding it); "
                "its rows were complete, so it is registered again", folder.name)
    return True


def _move_aside(root: Path, folder: Path) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = root / ORPHANS / f"{folder.name}-{stamp}"
    target.parent.mkdir(exist_ok=True)
    try:
        os.rename(folder, target)
    except OSError as exc:
        log.error("datasets/%s has no database entry and could not be moved aside (%s); "
                  "remove it to add a dataset of that name again", folder.name, exc)
        return
    log.warning("datasets/%s had no database entry (the server stopped while adding it); "
                "moved to %s. Add the file again", folder.name, target)
