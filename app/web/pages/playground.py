"""The playground: two models answer the same conversation side by side (issue #12).

GET /playground renders the page with the model pickers filled in; everything after that
is static/js/playground.js: it streams each column's answer from ``POST /v1/chat/completions``
(``stream: true``, the OpenAI shape every chat client speaks), shows the loaded models from
``GET /api/inference`` and unloads through ``POST /api/inference/unload``. The page itself
never talks to a worker.

Which models a column offers is the same list ``GET /v1/models`` answers (model ids:
``<base>`` and ``<base>@job-<N>``, README "Playground"). The query picks the columns:
``?model=<id>`` (column A) and ``?compare=<id>`` (column B), or ``?jobs=3,5`` (two runs'
adapters, from the jobs list). With nothing asked: the latest adapter against its base.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, select

from app.config import Settings
from app.inference.catalog import list_models, resolve
from app.inference.errors import InferenceError
from app.models import DatasetEntry
from app.web.deps import SessionDep, SettingsDep
from app.web.templating import page

router = APIRouter(include_in_schema=False)
SAMPLING = {"max_tokens": 256, "temperature": 0, "top_p": 1, "seed": ""}
ID_MAX = 1000  # characters of a model id taken from the URL


def model_choices(session: Session) -> list[dict[str, Any]]:
    """Every model id a column can pick, as GET /v1/models lists them (adapters newest
    first, then registered and other base models): {id, kind, base, backend, job_id, name}."""
    return [{**m["prospect"], "id": m["id"]} for m in list_models(session)]


def other_model(session: Session, settings: Settings, model_id: str) -> dict[str, Any] | str:
    """A model id /v1 serves though GET /v1/models does not list it (a folder, a hub id in
    the cache) as a picker entry; or why it cannot be served (the 404's message)."""
    try:
        t = resolve(session, settings, model_id, facts={})
    except InferenceError as exc:
        return exc.message
    return {"id": t.id, "kind": t.kind, "base": t.base, "backend": None, "job_id": t.job_id,
            "name": t.id}


def pick(models: list[dict[str, Any]], asked: list[str | None], compare_given: bool,
         find: Callable[[str], dict[str, Any] | str]) -> tuple[str, str, list[str]]:
    """Columns A and B from what was asked (``models`` grows by ids found with ``find``),
    and the problems with what was asked. Unset: A the latest adapter, B A's base model (or
    A's newest adapter when A is a base model)."""
    problems: list[str] = []
    chosen = []
    for value in asked:
        value = (value or "").strip()
        if value and value not in {m["id"] for m in models}:
            found = find(value)
            if isinstance(found, str):
                problems.append(found)
                value = ""
            else:
                models.append(found)
        chosen.append(value)
    a, b = chosen
    adapters = [m for m in models if m["kind"] == "adapter"]
    if not a:
        a = adapters[0]["id"] if adapters else (models[0]["id"] if models else "")
    if not b and not compare_given:
        entry = next((m for m in models if m["id"] == a), None)
        if entry and entry["kind"] == "adapter":
            b = entry["base"] if any(m["id"] == entry["base"] for m in models) else ""
        elif entry:
            b = next((m["id"] for m in adapters if m["base"] == a), "")
    return a, b, problems


def from_jobs(models: list[dict[str, Any]], jobs: str) -> tuple[list[str | None], list[str]]:
    """``?jobs=3,5``: those runs' adapters (the jobs list's "Side by side")."""
    by_job = {m["job_id"]: m["id"] for m in models if m.get("job_id") is not None}
    asked: list[str | None] = []
    problems = []
    for part in [p.strip() for p in jobs.split(",") if p.strip()][:2]:
        if part.isdigit() and int(part) in by_job:
            asked.append(by_job[int(part)])
        else:
            problems.append(f"job {part} has no adapter on disk")
    return (asked + [None, None])[:2], problems


@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, session: SessionDep, settings: SettingsDep,
                    model: Annotated[str | None, Query(max_length=ID_MAX)] = None,
                    compare: Annotated[str | None, Query(max_length=ID_MAX)] = None,
                    jobs: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    models = model_choices(session)
    asked, problems = from_jobs(models, jobs) if jobs and model is None else ([model, compare], [])
    a, b, more = pick(models, asked, compare is not None or bool(asked[1]),
                      lambda value: other_model(session, settings, value))
    datasets = session.exec(select(DatasetEntry.id).order_by(DatasetEntry.id)).all()
    groups = [(label, [m for m in models if m["kind"] == kind])
              for kind, label in (("adapter", "Adapters (trained runs)"),
                                  ("base", "Base models"), ("fused", "Fused models"))]
    return page(request, "playground.html", nav="playground", groups=groups, a=a, b=b,
                problems=problems + more, datasets=datasets, sampling=SAMPLING)
