"""The Models page's Add a local folder form, Remove and Convert for MLX (issue 15).

htmx posts here with the page's CSRF header; the work is app/jobs/model_folders.py, the same
functions the REST routes (app/web/api/model_folders.py) call. htmx swaps only a 2xx answer,
so a refusal comes back with a 200 as the fragment that shows it (beside the field, or in the
model's row); success is an HX-Redirect: to /models after adding or removing, to the convert
job's page after Convert. A caller without htmx gets the refusal's own status.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from app.errors import JobInputError
from app.jobs import model_folders as service
from app.web.deps import CsrfForm, SessionDep, SettingsDep, SupervisorDep
from app.web.templating import hx_redirect, is_htmx, page

router = APIRouter(include_in_schema=False, tags=["models"])
FORM_FIELDS = ("path", "name")


def row_key(model_id: str) -> str:
    """The id _model_actions.html gives a model's row elements."""
    return model_id.replace("/", "--").replace(".", "-")


def _refused(request: Request, template: str, exc: JobInputError, **context) -> HTMLResponse:
    return page(request, template, 200 if is_htmx(request) else exc.status_code, **context)


@router.post("/models/folders", response_class=HTMLResponse)
async def add_folder(request: Request, form: CsrfForm, session: SessionDep,
                     settings: SettingsDep) -> Response:
    """Add a local folder: its errors beside the field, or back to /models with it listed."""
    values = {k: str(form.get(k, "")).strip() for k in FORM_FIELDS}
    try:
        await run_in_threadpool(service.register_folder, session, settings, values["path"],
                                values["name"] or None)
    except JobInputError as exc:
        field = exc.field if exc.field in FORM_FIELDS else "form"
        return _refused(request, "_model_folder_form.html", exc, folder_form=values,
                        folder_errors={field: exc.message})
    return hx_redirect(request, "/models")


@router.delete("/models/{model_id:path}", response_class=HTMLResponse)
def remove(request: Request, session: SessionDep, _form: CsrfForm,
           model_id: str = PathParam(min_length=1, max_length=200)) -> Response:
    """Remove (unregister; the files stay): back to /models, or why not in the row."""
    try:
        service.unregister(session, model_id)
    except JobInputError as exc:
        return _refused(request, "_model_action_error.html", exc, key=row_key(model_id),
                        error=f"Remove failed: {exc.message}")
    return hx_redirect(request, "/models")


@router.post("/models/{model_id:path}/convert", response_class=HTMLResponse)
async def convert(request: Request, form: CsrfForm, session: SessionDep,
                  settings: SettingsDep, supervisor: SupervisorDep,
                  model_id: str = PathParam(min_length=1, max_length=1000)) -> Response:
    """Convert for MLX: the job's page, or why not in the row."""
    params = {k: str(form.get(k, "")).strip() or None
              for k in ("q_bits", "q_group_size", "dtype")}
    try:
        job = await run_in_threadpool(service.convert_model, session, settings, model_id,
                                      params, str(form.get("name", "")).strip() or None)
    except JobInputError as exc:
        return _refused(request, "_model_action_error.html", exc, key=row_key(model_id),
                        error=f"Convert failed: {exc.field}: {exc.message}")
    supervisor.wake()
    return hx_redirect(request, f"/jobs/{job.id}")
