"""The Datasets pages: the list with the add forms, one dataset (stats, problems, preview,
token lengths, MLX export, delete), and the new-job form's dataset hint.

Forms post here (not to /api) with the page's CSRF token, as the new-job form does; the
work itself is app/datasets/ (registry, stats, upload), shared with the REST API.
An htmx post gets a fragment back (or HX-Redirect); a plain form post a page or a 303.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, select
from starlette.datastructures import UploadFile

from app.datasets import registry
from app.datasets.stats import PREVIEW_ROWS, preview, token_lengths, tokenizer_folder
from app.datasets.upload import file_chunks, form_too_big, register_upload
from app.errors import JobInputError
from app.models import DatasetEntry, ModelEntry
from app.web.deps import CsrfForm, DatasetId, SessionDep, SettingsDep, checked_form
from app.web.templating import hx_redirect, is_htmx, page
from contract.knobs import ParamError, method_for

router = APIRouter(include_in_schema=False)


def models(session: Session) -> list[ModelEntry]:
    return list(session.exec(select(ModelEntry).order_by(ModelEntry.id)))


def list_context(session: Session, **extra: Any) -> dict[str, Any]:
    datasets = list(session.exec(select(DatasetEntry).order_by(DatasetEntry.created_at.desc())))
    return {"nav": "datasets", "datasets": datasets, "form": {}, "error": None,
            "hub_cached": registry.cached_hub_datasets(),
            "problems": [], "problem_count": 0, "add_mode": "upload", **extra}


@router.get("/datasets", response_class=HTMLResponse)
async def datasets_page(request: Request, session: SessionDep,
                        settings: SettingsDep) -> HTMLResponse:
    for entry in list(session.exec(select(DatasetEntry))):
        if entry.stats is None:  # registered before stats existed (the demo): counted once
            await run_in_threadpool(registry.ensure_stats, session, entry, settings)
    return page(request, "datasets.html", **list_context(session))


def _error_parts(exc: Exception) -> tuple[str, list[dict], int]:
    """(message, problems, count) of an add that failed, for the form."""
    if isinstance(exc, JobInputError):
        return f"{exc.field}: {exc.message}", [], 0
    detail = exc.detail  # HTTPException: a string, or our 422 list with the problems
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        return first.get("msg", "refused"), first.get("problems", []), \
            first.get("problem_count", 0)
    return str(detail), [], 0


def _refused(request: Request, session: Session, exc: Exception, form: dict,
             mode: str) -> HTMLResponse:
    message, problems, count = _error_parts(exc)
    context = list_context(session, form=form, error=message, problems=problems,
                           problem_count=count, add_mode=mode)
    if is_htmx(request):  # 200 so htmx swaps the form with its errors
        return page(request, "_dataset_add.html", **context)
    status = getattr(exc, "status_code", 422)
    return page(request, "datasets.html", status, **context)


@router.post("/datasets/upload", response_class=HTMLResponse)
async def upload_page(request: Request, session: SessionDep,
                      settings: SettingsDep) -> Response:
    """The page's upload: multipart, refused past the size limit before it is parsed (so
    not through CsrfForm, which would parse it first)."""
    too_big = form_too_big(settings, request.headers.get("content-length", ""))
    if too_big is not None:
        return _refused(request, session, too_big, {}, "upload")
    form = await checked_form(request)
    upload = form.get("file")
    filename = upload.filename if isinstance(upload, UploadFile) else ""
    typed = str(form.get("name", "")).strip()
    name = typed or registry.name_from(filename or "dataset")
    values = {"name": typed}  # shown again: only what the person typed
    try:
        if not isinstance(upload, UploadFile) or not filename:
            raise JobInputError("file", "choose a file to upload")

        entry = await register_upload(session, settings, name, filename, file_chunks(upload),
                                      None)
    except (JobInputError, HTTPException) as exc:
        return _refused(request, session, exc, values, "upload")
    return hx_redirect(request, f"/datasets/{entry.id}")


@router.post("/datasets/register", response_class=HTMLResponse)
async def register_page(request: Request, form: CsrfForm, session: SessionDep,
                        settings: SettingsDep) -> Response:
    values = {k: str(form.get(k, "")).strip() for k in ("name", "path", "hub_id", "split")}
    mode = "hub" if values["hub_id"] else "path"
    try:
        if values["hub_id"] and values["path"]:
            raise JobInputError("path", "give a file path or a hub id, not both")
        if values["hub_id"]:
            entry = await run_in_threadpool(registry.register_hub, session, settings,
                                            values["hub_id"], values["split"] or "train",
                                            values["name"] or None)
        elif values["path"]:
            entry = await run_in_threadpool(registry.register_path, session, settings,
                                            values["path"], values["name"] or None)
        else:
            raise JobInputError("path", "give the path of a file, or a Hugging Face dataset id")
    except (JobInputError, HTTPException) as exc:
        return _refused(request, session, exc, values, mode)
    return hx_redirect(request, f"/datasets/{entry.id}")


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
async def dataset_page(dataset_id: DatasetId, request: Request, session: SessionDep,
                       settings: SettingsDep) -> HTMLResponse:
    entry = session.get(DatasetEntry, dataset_id)
    if entry is None:
        return page(request, "not_found.html", 404, message=f"Dataset {dataset_id!r} does "
                    "not exist.")
    stats = await run_in_threadpool(registry.ensure_stats, session, entry, settings)
    rows = await run_in_threadpool(preview, entry, PREVIEW_ROWS, settings.python)
    model_list = models(session)
    return page(request, "dataset.html", nav="datasets", d=entry, stats=stats, rows=rows,
                models=model_list, model_choice=next(iter(m.id for m in model_list), ""))


@router.get("/datasets/{dataset_id}/tokens", response_class=HTMLResponse)
async def tokens_fragment(dataset_id: DatasetId, request: Request, session: SessionDep,
                          settings: SettingsDep,
                          model: Annotated[str, Query(max_length=1000)] = "",
                          max_length: Annotated[str, Query(max_length=20)] = "512"
                          ) -> HTMLResponse:
    """Token lengths as a fragment; a bad model or length is a message in the fragment."""
    entry = session.get(DatasetEntry, dataset_id)
    result, error = None, None
    try:
        if entry is None:
            raise JobInputError("dataset", f"dataset {dataset_id!r} does not exist")
        if not max_length.strip().isdigit() or not 8 <= int(max_length) <= 131072:
            raise JobInputError("max_length", "give a whole number of tokens from 8 to 131072")
        folder = tokenizer_folder(session, model, settings)
        result = await run_in_threadpool(token_lengths, entry, folder, int(max_length),
                                         settings)
    except JobInputError as exc:
        error = exc.message
    return page(request, "_dataset_tokens.html", result=result, error=error, d=entry)


@router.post("/datasets/{dataset_id}/delete", response_class=HTMLResponse)
async def delete_page(dataset_id: DatasetId, request: Request, form: CsrfForm,
                      session: SessionDep, settings: SettingsDep) -> Response:
    entry = session.get(DatasetEntry, dataset_id)
    if entry is not None:
        try:
            await run_in_threadpool(registry.delete, session, settings, entry)
        except JobInputError as exc:
            return page(request, "not_found.html", exc.status_code, title="Not deleted",
                        message=exc.message)
    return hx_redirect(request, "/datasets")


@router.get("/fragments/dataset-weights", response_class=HTMLResponse)
async def dataset_weights(request: Request, session: SessionDep, settings: SettingsDep,
                          dataset_choice: Annotated[str, Query(max_length=200)] = "",
                          method: Annotated[str, Query(max_length=40)] = "torch/kto"
                          ) -> HTMLResponse:
    """The new-job form's dataset hint: the balance of the picked dataset, and its KTO
    weights put into the desirable_weight / undesirable_weight fields (out of band)."""
    entry = session.get(DatasetEntry, dataset_choice) if dataset_choice else None
    stats, knobs = None, []
    if entry is not None:
        stats = await run_in_threadpool(registry.ensure_stats, session, entry, settings)
        backend, _, name = method.partition("/")
        try:
            spec = method_for(backend or "torch", name or "kto")
        except ParamError:
            spec = None
        if spec is not None and stats.get("desirable_weight") is not None:
            knobs = [(k, stats[k.name]) for k in spec.knobs
                     if k.name in ("desirable_weight", "undesirable_weight")]
    return page(request, "_dataset_weights.html", d=entry, stats=stats, knobs=knobs)
