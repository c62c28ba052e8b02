"""The Datasets pages: the list with the add forms, one dataset (stats, problems, preview,
token lengths, MLX export, delete), and the new-job form's dataset hint.

Forms post here (not to /api) with the page's CSRF token, as the new-job form does; the
work itself is app/datasets/registry.py and app/datasets/stats.py, shared with the REST API.
An htmx post gets a fragment back (or HX-Redirect); a plain form post a page or a 303.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, select
from starlette.datastructures import UploadFile

from app.datasets import registry
from app.datasets.stats import PREVIEW_ROWS, preview, token_lengths, tokenizer_folder
from app.db import SessionDep
from app.errors import JobInputError
from app.models import DatasetEntry, ModelEntry
from app.security import CSRF_FIELD, CSRF_HEADER, csrf_ok
from app.web.api.datasets import DatasetId, register_upload, size_limit_error
from app.web.pages.jobs import is_htmx, page
from contract.knobs import ParamError, method_for

router = APIRouter(include_in_schema=False)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields, beyond the file
REFUSED = ("This form did not come from this Prospect server's own page (its CSRF token is "
           "missing, or the server restarted since the page was loaded). Reload the page and "
           "try again.")


def models(session: Session) -> list[ModelEntry]:
    return list(session.exec(select(ModelEntry).order_by(ModelEntry.id)))


def list_context(session: Session, **extra: Any) -> dict[str, Any]:
    datasets = list(session.exec(select(DatasetEntry).order_by(DatasetEntry.created_at.desc())))
    return {"nav": "datasets", "datasets": datasets, "form": {}, "error": None,
            "hub_cached": registry.cached_hub_datasets(),
            "problems": [], "problem_count": 0, "add_mode": "upload", **extra}


@router.get("/datasets", response_class=HTMLResponse)
async def datasets_page(request: Request, session: SessionDep) -> HTMLResponse:
    settings = request.app.state.settings
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


def _added(request: Request, entry: DatasetEntry) -> Response:
    url = f"/datasets/{entry.id}"
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _refused(request: Request, session: Session, exc: Exception, form: dict,
             mode: str) -> HTMLResponse:
    message, problems, count = _error_parts(exc)
    context = list_context(session, form=form, error=message, problems=problems,
                           problem_count=count, add_mode=mode)
    if is_htmx(request):  # 200 so htmx swaps the form with its errors
        return page(request, "_dataset_add.html", **context)
    status = getattr(exc, "status_code", 422)
    return page(request, "datasets.html", status, **context)


def _csrf(request: Request, form) -> bool:
    given = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD, ""))
    return csrf_ok(given, request.app.state.csrf_token)


@router.post("/datasets/upload", response_class=HTMLResponse)
async def upload_page(request: Request, session: SessionDep) -> Response:
    """The page's upload: multipart, refused past the size limit before it is parsed."""
    settings = request.app.state.settings
    declared = request.headers.get("content-length", "")
    limit = settings.upload_limit_mb * 2**20 + FORM_OVERHEAD
    if not declared.isdigit() or int(declared) > limit:
        exc = size_limit_error(settings, declared if declared.isdigit() else None)
        return _refused(request, session, exc, {}, "upload")
    form = await request.form()
    if not _csrf(request, form):
        return page(request, "not_found.html", 403, title="Form refused", message=REFUSED)
    upload = form.get("file")
    filename = upload.filename if isinstance(upload, UploadFile) else ""
    typed = str(form.get("name", "")).strip()
    name = typed or registry.name_from(filename or "dataset")
    values = {"name": typed}  # shown again: only what the person typed
    try:
        if not isinstance(upload, UploadFile) or not filename:
            raise JobInputError("file", "choose a file to upload")

        async def chunks():
            while data := await upload.read(1 << 20):
                yield data

        entry = await register_upload(session, settings, name, filename, chunks(), None)
    except (JobInputError, HTTPException) as exc:
        return _refused(request, session, exc, values, "upload")
    return _added(request, entry)


@router.post("/datasets/register", response_class=HTMLResponse)
async def register_page(request: Request, session: SessionDep) -> Response:
    form = await request.form()
    if not _csrf(request, form):
        return page(request, "not_found.html", 403, title="Form refused", message=REFUSED)
    values = {k: str(form.get(k, "")).strip() for k in ("name", "path", "hub_id", "split")}
    settings = request.app.state.settings
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
    return _added(request, entry)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
async def dataset_page(dataset_id: DatasetId, request: Request,
                       session: SessionDep) -> HTMLResponse:
    entry = session.get(DatasetEntry, dataset_id)
    if entry is None:
        return page(request, "not_found.html", 404, message=f"Dataset {dataset_id!r} does "
                    "not exist.")
    settings = request.app.state.settings
    stats = await run_in_threadpool(registry.ensure_stats, session, entry, settings)
    rows = await run_in_threadpool(preview, entry, PREVIEW_ROWS, settings.python)
    model_list = models(session)
    return page(request, "dataset.html", nav="datasets", d=entry, stats=stats, rows=rows,
                models=model_list, model_choice=next(iter(m.id for m in model_list), ""))


@router.get("/datasets/{dataset_id}/tokens", response_class=HTMLResponse)
async def tokens_fragment(dataset_id: DatasetId, request: Request, session: SessionDep,
                          model: Annotated[str, Query(max_length=1000)] = "",
                          max_length: Annotated[str, Query(max_length=20)] = "512"
                          ) -> HTMLResponse:
    """Token lengths as a fragment; a bad model or length is a message in the fragment."""
    settings = request.app.state.settings
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
async def delete_page(dataset_id: DatasetId, request: Request, session: SessionDep) -> Response:
    form = await request.form()
    if not _csrf(request, form):
        return page(request, "not_found.html", 403, title="Form refused", message=REFUSED)
    entry = session.get(DatasetEntry, dataset_id)
    if entry is not None:
        try:
            await run_in_threadpool(registry.delete, session, request.app.state.settings,
                                    entry)
        except JobInputError as exc:
            return page(request, "not_found.html", exc.status_code, title="Not deleted",
                        message=exc.message)
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": "/datasets"})
    return RedirectResponse("/datasets", status_code=303)


@router.get("/fragments/dataset-weights", response_class=HTMLResponse)
async def dataset_weights(request: Request, session: SessionDep,
                          dataset_choice: Annotated[str, Query(max_length=200)] = "",
                          method: Annotated[str, Query(max_length=40)] = "torch/kto"
                          ) -> HTMLResponse:
    """The new-job form's dataset hint: the balance of the picked dataset, and its KTO
    weights put into the desirable_weight / undesirable_weight fields (out of band)."""
    entry = session.get(DatasetEntry, dataset_choice) if dataset_choice else None
    stats, knobs = None, []
    if entry is not None:
        stats = await run_in_threadpool(registry.ensure_stats, session, entry,
                                        request.app.state.settings)
        backend, _, name = method.partition("/")
        try:
            spec = method_for(backend or "torch", name or "kto")
        except ParamError:
            spec = None
        if spec is not None and stats.get("desirable_weight") is not None:
            knobs = [(k, stats[k.name]) for k in spec.knobs
                     if k.name in ("desirable_weight", "undesirable_weight")]
    return page(request, "_dataset_weights.html", d=entry, stats=stats, knobs=knobs)
