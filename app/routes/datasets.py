"""Datasets over REST: list, and upload a file streamed to disk under a size limit.

The body of `POST /api/datasets?name=…&filename=…` is the file itself (any non-form content
type, e.g. application/octet-stream): it is written to datasets/ chunk by chunk and refused
with a 413 the moment it passes PROSPECT_UPLOAD_LIMIT_MB, before the rest is read. Every row
is then checked; a file with a bad row is removed and the 422 names the row.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from sqlmodel import select

from app.db import SessionDep
from app.jobs import JobInputError, check_kto_dataset
from app.models import DatasetEntry

router = APIRouter(prefix="/api")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SUFFIXES = (".jsonl", ".json")


@router.get("/datasets")
def list_datasets(session: SessionDep) -> list[DatasetEntry]:
    return list(session.exec(select(DatasetEntry).order_by(DatasetEntry.id)))


@router.post("/datasets", status_code=201, response_model=DatasetEntry)
async def upload_dataset(request: Request, session: SessionDep,
                         name: Annotated[str, Query(min_length=1, max_length=64)],
                         filename: Annotated[str, Query(min_length=1, max_length=255)]
                         ) -> DatasetEntry:
    settings = request.app.state.settings
    if not NAME.match(name):
        raise JobInputError("name", "use letters, digits, '.', '_' or '-' (at most 64), "
                            "starting with a letter or digit")
    suffix = Path(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise JobInputError("filename", f"{filename!r}: upload a .jsonl or .json file")
    if session.get(DatasetEntry, name) is not None:
        raise JobInputError("name", f"a dataset named {name!r} exists; choose another name",
                            status_code=409)
    limit = settings.upload_limit_mb * 2**20
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the file is {int(declared) / 2**20:.1f} MB; the upload "
                            f"limit is {settings.upload_limit_mb} MB (PROSPECT_UPLOAD_LIMIT_MB)")
    final = settings.datasets_dir / f"{name}{suffix}"
    fd, tmp = tempfile.mkstemp(dir=settings.datasets_dir, prefix=".upload-", suffix=suffix)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # stop reading now: the rest never reaches the disk
                    raise HTTPException(413, f"the upload passed the limit of "
                                        f"{settings.upload_limit_mb} MB "
                                        "(PROSPECT_UPLOAD_LIMIT_MB)")
                out.write(chunk)
        if size == 0:
            raise JobInputError("file", "the upload is empty: send the file as the body")
        stats = check_kto_dataset(tmp, shown=filename)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    entry = DatasetEntry(id=name, path=str(final), format="kto", rows=stats["rows"])
    session.add(entry)
    session.commit()
    session.refresh(entry)
    return entry
