"""An upload, streamed: written to datasets/ chunk by chunk and refused with a 413 the moment
it passes PROSPECT_UPLOAD_LIMIT_MB, before the rest is read; then registered like any file
(app/datasets/registry.py checks every row). ``POST /api/datasets`` (the body is the file)
and the Datasets page's multipart form share it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session
from starlette.datastructures import UploadFile

from app.config import Settings
from app.datasets import registry
from app.errors import JobInputError
from app.models import DatasetEntry

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields, beyond the file
CHUNK = 1 << 20


def size_limit_error(settings: Settings, declared: str | None = None) -> HTTPException:
    if declared:
        return HTTPException(413, f"the file is {int(declared) / 2**20:.1f} MB; the upload "
                             f"limit is {settings.upload_limit_mb} MB (PROSPECT_UPLOAD_LIMIT_MB)")
    return HTTPException(413, f"the upload passed the limit of {settings.upload_limit_mb} MB "
                         "(PROSPECT_UPLOAD_LIMIT_MB)")


def form_too_big(settings: Settings, declared: str) -> HTTPException | None:
    """The 413 for a multipart form whose Content-Length (missing counts as too big) passes
    the limit plus the form's own overhead; checked before the form is parsed."""
    limit = settings.upload_limit_mb * 2**20 + FORM_OVERHEAD
    if not declared.isdigit() or int(declared) > limit:
        return size_limit_error(settings, declared if declared.isdigit() else None)
    return None


async def file_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    """A parsed form's file, read back a chunk at a time."""
    while data := await upload.read(CHUNK):
        yield data


async def save_upload(chunks: AsyncIterator[bytes], settings: Settings, suffix: str) -> Path:
    """Write the chunks to a temporary file in datasets/, stopping at the size limit."""
    limit = settings.upload_limit_mb * 2**20
    fd, tmp = tempfile.mkstemp(dir=settings.datasets_dir, prefix=".upload-", suffix=suffix)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:  # stop reading now: the rest never reaches the disk
                    raise size_limit_error(settings)
                out.write(chunk)
        if size == 0:
            raise JobInputError("file", "the upload is empty: send the file as the body")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


async def register_upload(session: Session, settings: Settings, name: str, filename: str,
                          chunks: AsyncIterator[bytes], declared: str | None) -> DatasetEntry:
    """Check the name and file type, stream to disk, analyse and register."""
    registry.check_name(session, name)
    suffix = registry.check_suffix(filename)
    if declared and declared.isdigit() and int(declared) > settings.upload_limit_mb * 2**20:
        raise size_limit_error(settings, declared)
    tmp = await save_upload(chunks, settings, suffix)
    try:
        return await run_in_threadpool(registry.register, session, settings, name, [tmp],
                                       source="upload", shown=filename, upload=tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
