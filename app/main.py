"""The FastAPI application: one light process that never imports an ML library."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings, get_settings
from app.datasets.registry import sweep_leftovers
from app.db import ROOT, make_engine, migrate
from app.errors import JobInputError
from app.inference.errors import InferenceError
from app.inference.manager import InferenceManager
from app.inference.openai_shapes import error_body, validation_error
from app.jobs.supervisor import Supervisor
from app.security import LocalOnlyMiddleware, new_csrf_token
from app.server_lock import hold_home
from app.web.api import (
    adapters,
    arenas,
    artifacts,
    datasets,
    feedback,
    hub_download,
    inference,
    jobs,
    model_cache,
    model_folders,
    openai,
    plan,
    runs,
    series,
    system,
)
from app.web.api import settings as settings_api
from app.web.deps import FormRefused
from app.web.pages import arenas as arena_pages
from app.web.pages import datasets as dataset_pages
from app.web.pages import feedback as feedback_pages
from app.web.pages import job, library, new_job, playground
from app.web.pages import jobs as jobs_pages
from app.web.pages import model_download as model_download_pages
from app.web.pages import model_folders as model_folder_pages
from app.web.pages import plan as plan_pages
from app.web.pages import runs as run_pages
from app.web.pages import system as system_pages
from app.web.templating import page

log = logging.getLogger("prospect")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.is_loopback and not settings.api_token:
        raise SystemExit(f"refusing to listen on {settings.host} without an API token: set "
                         "PROSPECT_API_TOKEN, or bind 127.0.0.1")
    settings.ensure_dirs()
    engine = make_engine(settings.db_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Before anything touches the home: a second server on it would run jobs twice.
        lock = app.state.home_lock or hold_home(settings.home_dir, settings.host, settings.port)
        migrate(engine)
        sweep_leftovers(engine, settings)  # what a killed server left in datasets/
        await app.state.supervisor.start()
        reaper = asyncio.create_task(app.state.inference.run_reaper(), name="inference-idle")
        log.info("Prospect home %s", settings.home_dir)
        yield
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await asyncio.to_thread(app.state.inference.stop_all)  # workers never outlive us
        await app.state.supervisor.stop()
        engine.dispose()
        lock.release()

    app = FastAPI(title="Prospect", version="0.1.0", lifespan=lifespan,
                  description="Local KTO and LoRA fine-tuning: jobs, live metrics, adapters.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.home_lock = None  # `prospect serve` takes it before uvicorn starts
    app.state.supervisor = Supervisor(engine, settings)
    app.state.inference = InferenceManager(engine, settings)
    # A job about to start unloads the loaded models when it would not fit beside them.
    app.state.supervisor.make_room = app.state.inference.make_room
    app.state.csrf_token = new_csrf_token()  # per process: pages embed it, forms return it
    app.add_middleware(LocalOnlyMiddleware, settings=settings, csrf_token=app.state.csrf_token)

    @app.exception_handler(JobInputError)
    async def _bad_input(request: Request, exc: JobInputError) -> JSONResponse:
        loc = ["body", *exc.field.split(".")]
        return JSONResponse(status_code=exc.status_code, content={
            "detail": [{"loc": loc, "field": exc.field, "msg": exc.message,
                        "type": "value_error", **(exc.extra or {})}]})

    @app.exception_handler(FormRefused)
    async def _form_refused(request: Request, exc: FormRefused) -> HTMLResponse:
        return page(request, "not_found.html", 403, title="Form refused", message=exc.message)

    @app.exception_handler(InferenceError)
    async def _inference_error(request: Request, exc: InferenceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=error_body(
            exc.message, exc.status, exc.code, exc.param, **(exc.extra or {})))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/v1/"):  # OpenAI clients read OpenAI's shape
            return JSONResponse(status_code=exc.status_code, headers=exc.headers, content=
                                error_body(str(exc.detail), exc.status_code))
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        if request.url.path.startswith("/v1/"):
            return JSONResponse(status_code=500, content=error_body(
                f"internal error: {type(exc).__name__}; see the server's log", 500))
        return PlainTextResponse("Internal Server Error", status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            return JSONResponse(status_code=422, content=validation_error(exc.errors()))
        detail = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            # Only the first part says where the value came from: a field named "path" stays.
            parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
            field = ".".join(parts)
            msg = err.get("msg", "invalid")
            jobs = request.url.path.startswith("/api/jobs")
            if err.get("type") == "extra_forbidden" and not jobs:
                msg = (f"unknown field {field!r}; this request does not take it (/docs lists "
                       "the fields of each route)")
            elif err.get("type") == "extra_forbidden" and request.method == "PATCH":
                msg = f"unknown field {field!r}; a run's name, notes and tags can be changed"
            elif err.get("type") == "extra_forbidden":
                msg = (f"unknown field {field!r}; a job takes name, backend, method, model, "
                       "dataset, params and force")
            detail.append({"loc": loc, "field": field, "msg": msg, "type": err.get("type")})
        return JSONResponse(status_code=422, content={"detail": detail})

    # The order matters where paths overlap: /jobs/new before /jobs/{id}, /models/cache/…
    # before /models/{id:path} (a hub model's id has a slash).
    for router in (jobs.router, hub_download.router, model_cache.router, model_folders.router,
                   model_download_pages.router, runs.api,
                   run_pages.router, adapters.router, datasets.router,
                   dataset_pages.router, system.router, system_pages.router, plan.router,
                   settings_api.router,
                   plan_pages.router, jobs_pages.router, new_job.router, job.router,
                   artifacts.router, series.router, library.router,
                   model_folder_pages.router, library.api,
                   openai.router, inference.router, playground.router, feedback.router,
                   feedback_pages.router, arenas.router, arena_pages.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    return app
