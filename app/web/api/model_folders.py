"""Your own folders and MLX conversion: POST /api/models, DELETE /api/models/{id}, POST
/api/models/{id}/convert (issue 15). The rules are app/jobs/model_folders.py's.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from app.hub.folders import describe_entry
from app.jobs import model_folders as service
from app.models import JobPublic
from app.web.deps import SessionDep, SettingsDep, SupervisorDep

router = APIRouter(prefix="/api", tags=["models"])


class FolderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=4096, description="An absolute folder inside your home "
                      "folder: saved with save_pretrained, or an MLX model folder.")
    name: str | None = Field(default=None, max_length=200, description="The model's id; "
                             "default: the folder's name.")


class ConvertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q_bits: int | None = Field(default=None, description="4 or 8; 0: no quantization.")
    q_group_size: int | None = Field(default=None, description="32, 64 or 128.")
    dtype: str | None = Field(default=None, description="auto, float16, bfloat16 or float32.")
    name: str | None = Field(default=None, max_length=200, description="The converted "
                             "model's id; default <model>-<bits>bit.")


@router.post("/models", status_code=201)
def register(body: FolderRequest, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Register a model folder: 422 naming what is missing, 409 for a name or folder
    registered already."""
    entry = service.register_folder(session, settings, body.path, body.name)
    return describe_entry(entry)


@router.delete("/models/{model_id:path}")
def unregister(session: SessionDep,
               model_id: str = PathParam(min_length=1, max_length=200)) -> dict[str, Any]:
    """Unregister a model; its files stay. 409 while a queued or running job uses it."""
    return service.unregister(session, model_id)


@router.post("/models/{model_id:path}/convert", status_code=201, response_model=JobPublic)
def convert(session: SessionDep, settings: SettingsDep, supervisor: SupervisorDep,
            model_id: str = PathParam(min_length=1, max_length=1000),
            body: ConvertRequest | None = None):
    """Queue an MLX convert job of a registered model or a cached hub id; the converted model
    is registered under ``name`` when it is saved."""
    body = body or ConvertRequest()
    job = service.convert_model(session, settings, model_id,
                                {"q_bits": body.q_bits, "q_group_size": body.q_group_size,
                                 "dtype": body.dtype}, body.name)
    supervisor.wake()
    return job
