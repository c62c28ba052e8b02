"""Datasets over REST: upload, register a local file or a cached hub dataset, inspect, export.

The body of `POST /api/datasets?name=…&filename=…` is the file itself (any non-form content
type, e.g. application/octet-stream): it is written to datasets/ chunk by chunk and refused
with a 413 the moment it passes PROSPECT_UPLOAD_LIMIT_MB, before the rest is read
(app/datasets/upload.py). Every row is then checked; a file with a bad row is removed and the
422 lists the rows at fault. `POST /api/datasets/register` takes JSON: a local `path`, or a `hub_id`
already in the Hugging Face cache (and its `split`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session, select

from app.datasets import registry
from app.datasets.stats import mlx_export, preview, token_lengths, tokenizer_folder
from app.datasets.upload import register_upload
from app.errors import JobInputError
from app.models import DatasetEntry
from app.web.deps import DatasetId, SessionDep, SettingsDep

router = APIRouter(prefix="/api")


class RegisterRequest(BaseModel):
    """A dataset already on this machine: a file `path`, or a `hub_id` in the HF cache."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    path: str | None = None
    hub_id: str | None = None
    split: str = "train"


def get_entry(session: Session, dataset_id: str) -> DatasetEntry:
    entry = session.get(DatasetEntry, dataset_id)
    if entry is None:
        raise HTTPException(404, f"dataset {dataset_id!r} does not exist; GET /api/datasets "
                            "lists them")
    return entry


@router.get("/datasets")
def list_datasets(session: SessionDep) -> list[DatasetEntry]:
    return list(session.exec(select(DatasetEntry).order_by(DatasetEntry.id)))


@router.post("/datasets", status_code=201, response_model=DatasetEntry)
async def upload_dataset(request: Request, session: SessionDep, settings: SettingsDep,
                         name: Annotated[str, Query(min_length=1, max_length=64)],
                         filename: Annotated[str, Query(min_length=1, max_length=255)]
                         ) -> DatasetEntry:
    return await register_upload(session, settings, name, filename, request.stream(),
                                 request.headers.get("content-length"))


@router.post("/datasets/register", status_code=201, response_model=DatasetEntry)
async def register_dataset(body: RegisterRequest, session: SessionDep,
                           settings: SettingsDep) -> DatasetEntry:
    if bool(body.path) == bool(body.hub_id):
        raise JobInputError("path", "give either path (a local file) or hub_id (a dataset "
                            "in the Hugging Face cache)")
    if body.path:
        return await run_in_threadpool(registry.register_path, session, settings, body.path,
                                       body.name)
    return await run_in_threadpool(registry.register_hub, session, settings, body.hub_id,
                                   body.split, body.name)


@router.get("/datasets/{dataset_id}", response_model=DatasetEntry)
async def get_dataset(dataset_id: DatasetId, session: SessionDep,
                      settings: SettingsDep) -> DatasetEntry:
    entry = get_entry(session, dataset_id)
    await run_in_threadpool(registry.ensure_stats, session, entry, settings)
    return entry


@router.get("/datasets/{dataset_id}/preview")
async def preview_dataset(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep,
                          limit: Annotated[int, Query(ge=1, le=200)] = 20
                          ) -> list[dict[str, Any]]:
    entry = get_entry(session, dataset_id)
    return await run_in_threadpool(preview, entry, limit, settings.python)


@router.get("/datasets/{dataset_id}/tokens")
async def dataset_tokens(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep,
                         model: Annotated[str, Query(min_length=1, max_length=1000)],
                         max_length: Annotated[int, Query(ge=8, le=131072)] = 512
                         ) -> dict[str, Any]:
    """Token length percentiles with the model's tokenizer and chat template, and how many
    rows `max_length` would truncate (or, for KTO, drop: the prompt alone fills it)."""
    entry = get_entry(session, dataset_id)
    folder = tokenizer_folder(session, model, settings)
    result = await run_in_threadpool(token_lengths, entry, folder, max_length, settings)
    return {"dataset": entry.id, "model": model, **result}


@router.get("/datasets/{dataset_id}/mlx")
async def dataset_mlx(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep,
                      seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
                      style: Literal["chat", "text"] = "chat",
                      file: Literal["zip", "train", "valid"] = "zip") -> FileResponse:
    """The dataset as mlx-lm's data folder: train.jsonl and valid.jsonl (desirable rows of a
    KTO dataset; a 90/10 split by `seed`), as a zip or one file."""
    entry = get_entry(session, dataset_id)
    folder = await run_in_threadpool(mlx_export, entry, settings, seed, style)
    if file == "zip":
        return FileResponse(folder / "mlx.zip", media_type="application/zip",
                            filename=f"{entry.id}-mlx.zip")
    return FileResponse(folder / f"{file}.jsonl", media_type="application/jsonl",
                        filename=f"{file}.jsonl")


@router.delete("/datasets/{dataset_id}", status_code=204)
async def delete_dataset(dataset_id: DatasetId, session: SessionDep,
                         settings: SettingsDep) -> Response:
    entry = get_entry(session, dataset_id)
    await run_in_threadpool(registry.delete, session, settings, entry)
    return Response(status_code=204)
