"""The arena pages: /arenas (the list and the New arena form), /arenas/{id} (the generate
job's progress until it ends, then the blind review and the results), and the fragment a
run's page includes (GET /jobs/{id}/arena: the latest arena its adapter was in).

The review is htmx: a verdict posts here and gets the next pair back, with the results table
out of band; static/js/arena.js only maps the keys (←/1, →/2, ↑/3, ↓/4) to the buttons.
The work is app/arena/service.py, shared with /api/arenas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, col, select

from app.arena import results as scores
from app.arena import service
from app.errors import JobInputError
from app.inference.catalog import list_models
from app.models import Arena, DatasetEntry, Job
from app.web.deps import DB_INT_MAX, CsrfForm, JobId, SessionDep, SettingsDep, SupervisorDep
from app.web.templating import hx_redirect, is_htmx, page
from contract.eval_split import EVAL_SPLIT_FILE

router = APIRouter(include_in_schema=False)
DEFAULTS = {"n": 20, "max_tokens": 256, "temperature": 0.7}


# --- the list and the form ---------------------------------------------------------------------
def variant_groups(session: Session) -> list[tuple[str, list[dict[str, Any]]]]:
    models = [{**m["prospect"], "id": m["id"]} for m in list_models(session)]
    return [(label, [m for m in models if m["kind"] == kind])
            for kind, label in (("adapter", "Adapters (trained runs)"),
                                ("base", "Base models"), ("fused", "Fused models"))]


def split_runs(session: Session) -> list[Job]:
    """KTO runs that recorded a held-out split (eval_fraction > 0), newest first."""
    jobs = session.exec(select(Job).where(Job.method == "kto", Job.run_dir != "")
                        .order_by(col(Job.id).desc()).limit(200)).all()
    return [j for j in jobs if (Path(j.run_dir) / EVAL_SPLIT_FILE).is_file()]


def form_context(session: Session, form: dict[str, Any], error: str | None = None,
                 field: str | None = None) -> dict[str, Any]:
    groups = variant_groups(session)
    adapters = groups[0][1]
    runs = split_runs(session)
    datasets = session.exec(select(DatasetEntry.id).where(DatasetEntry.kind == "kto")
                            .order_by(DatasetEntry.id)).all()
    form = {**{k: str(v) for k, v in DEFAULTS.items()}, **form}
    if not form.get("variant_a") and adapters:
        form["variant_a"] = adapters[0]["id"]
        form.setdefault("variant_b", adapters[0]["base"])
    if not form.get("source"):
        form["source"] = "split" if runs else "dataset" if datasets else "prompts"
    if not form.get("split_job") and runs:
        a_run = next((m["job_id"] for m in adapters if m["id"] == form.get("variant_a")), None)
        form["split_job"] = str(a_run if a_run in {r.id for r in runs} else runs[0].id)
    return {"groups": groups, "runs": runs, "datasets": datasets, "form": form,
            "error": error, "error_field": field}


def arena_rows(session: Session) -> list[dict[str, Any]]:
    rows = []
    for arena in service.list_arenas(session):
        job = session.get(Job, arena.job_id)
        judged, total = service.judged_count(session, arena.id)
        rows.append({"arena": arena, "job": job, "judged": judged, "total": total,
                     "score": service.arena_results(session, arena) if judged else None})
    return rows


@router.get("/arenas", response_class=HTMLResponse)
def arenas_page(request: Request, session: SessionDep,
                job: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None) -> HTMLResponse:
    """``?job=N``: the form starts with run N's adapter against its base, on its split."""
    form: dict[str, Any] = {}
    run = session.get(Job, job) if job else None
    if run is not None and run.adapter_path:
        form = {"variant_a": f"{run.model}@job-{run.id}", "variant_b": run.model}
        if (Path(run.run_dir) / EVAL_SPLIT_FILE).is_file():
            form.update(source="split", split_job=str(run.id))
    return page(request, "arenas.html", nav="arenas", rows=arena_rows(session),
                **form_context(session, form))


def _int(form: dict[str, str], name: str, default: int | None) -> int | None:
    value = form.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise JobInputError(name, f"{value!r} is not a whole number") from None


def _source(form: dict[str, str]) -> dict[str, Any]:
    kind = form.get("source", "")
    if kind == "split":
        return {"kind": "split", "job_id": _int(form, "split_job", None)}
    if kind == "dataset":
        return {"kind": "dataset", "dataset": form.get("dataset", "")}
    return {"kind": "prompts", "prompts": form.get("prompts", "").splitlines()}


@router.post("/arenas", response_class=HTMLResponse)
def create_page(request: Request, form: CsrfForm, session: SessionDep, settings: SettingsDep,
                supervisor: SupervisorDep) -> Response:
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    try:
        temperature = values.get("temperature", "").strip()
        try:
            temp = float(temperature) if temperature else None
        except ValueError:
            raise JobInputError("temperature", f"{temperature!r} is not a number") from None
        arena = service.create_arena(
            session, settings, variant_a=values.get("variant_a", ""),
            variant_b=values.get("variant_b", ""), source=_source(values),
            n=_int(values, "n", 20), seed=_int(values, "seed", None),
            max_tokens=_int(values, "max_tokens", None), temperature=temp,
            force=values.get("force") == "on")
    except JobInputError as exc:
        context = form_context(session, values, exc.message, exc.field.split(".")[0])
        if is_htmx(request):
            return page(request, "_arena_form.html", **context)
        return page(request, "arenas.html", exc.status_code, nav="arenas",
                    rows=arena_rows(session), **context)
    supervisor.wake()
    return hx_redirect(request, f"/arenas/{arena.id}")


# --- one arena ---------------------------------------------------------------------------------
def _get(session: Session, arena_id: int) -> Arena:
    try:
        return service.get_arena(session, arena_id)
    except service.ArenaNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def stage_context(session: Session, arena: Arena) -> dict[str, Any]:
    """What the review area shows: the job's progress, why it stopped, a pair, or done."""
    job = session.get(Job, arena.job_id)
    ready = service.ensure_pairs(session, arena)
    judged, total = service.judged_count(session, arena.id)
    pair = service.next_pair(session, arena) if ready else None
    return {"arena": arena, "job": job, "ready": ready, "judged": judged, "total": total,
            "pair": service.blind(pair) if pair else None,
            "problem": None if ready or job is None or not job.status.is_final
            else service.not_ready(session, arena)}


def results_context(session: Session, arena: Arena) -> dict[str, Any]:
    score = service.arena_results(session, arena)
    return {"score": score, "summary": scores.verdict_text(score)}


@router.get("/arenas/{arena_id}", response_class=HTMLResponse)
def arena_page(request: Request, arena_id: int, session: SessionDep) -> HTMLResponse:
    if not 1 <= arena_id <= DB_INT_MAX or session.get(Arena, arena_id) is None:
        return page(request, "not_found.html", 404, message=f"Arena {arena_id} does not exist.")
    arena = _get(session, arena_id)
    return page(request, "arena.html", nav="arenas", **stage_context(session, arena),
                **results_context(session, arena))


@router.get("/arenas/{arena_id}/stage", response_class=HTMLResponse)
def stage(request: Request, arena_id: int, session: SessionDep) -> HTMLResponse:
    arena = _get(session, arena_id)
    return page(request, "_arena_stage.html", **stage_context(session, arena),
                **results_context(session, arena), oob=True)


@router.post("/arenas/{arena_id}/pairs/{pair_id}/verdict", response_class=HTMLResponse)
def verdict(request: Request, arena_id: int, pair_id: int, form: CsrfForm,
            session: SessionDep) -> HTMLResponse:
    """The verdict (left, right, both_good, both_bad), then the next pair and, out of
    band, the results."""
    arena = _get(session, arena_id)
    try:
        pair = service.get_pair(session, arena, pair_id)
    except service.ArenaNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    side = str(form.get("verdict", ""))
    if side not in scores.SIDES:
        raise HTTPException(422, f"verdict {side!r}: use one of {', '.join(scores.SIDES)}")
    service.judge(session, arena, pair, side)
    return page(request, "_arena_stage.html", **stage_context(session, arena),
                **results_context(session, arena), oob=True)


@router.get("/jobs/{job_id}/arena", response_class=HTMLResponse)
def run_arena(request: Request, job_id: JobId, session: SessionDep) -> HTMLResponse:
    """The latest arena where this run's adapter is a variant (a fragment of the job page);
    404 when there is none."""
    job = session.get(Job, job_id)
    arena = service.latest_for_run(session, job) if job else None
    if arena is None:
        raise HTTPException(404, f"no arena has job {job_id}'s adapter")
    judged, total = service.judged_count(session, arena.id)
    return page(request, "_arena_run.html", arena=arena, judged=judged, total=total, run=job,
                **results_context(session, arena))
