"""Arenas: a blind review of two variants (catalog ids, ``<base>`` or ``<base>@job-<N>``) on
the same prompts. Creating one resolves both variants, gathers the prompts, and queues a
generate job (app/jobs/generate.py) that writes both variants' answers; app/arena/ingest.py
copies them into pairs once it has succeeded; a verdict is stored in variant terms and
becomes two Feedback rows (source "arena"), so the review feeds the next KTO dataset.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, delete, func, select

from app.arena import results
from app.arena.ingest import ensure_pairs
from app.config import Settings
from app.errors import JobInputError, JobStateError
from app.feedback import store as feedback_store
from app.inference.catalog import Target, parse_id, resolve
from app.inference.errors import InferenceError
from app.jobs.generate import create_generate_job
from app.models import Arena, ArenaPair, DatasetEntry, Feedback, Job, JobStatus
from contract.eval_split import read_split
from contract.rows import DatasetError, load_kto_dataset, prompt_messages

N_MAX = 500
PROMPT_MAX = 20_000  # characters of one pasted prompt


class ArenaNotFound(LookupError):
    """An arena or pair that does not exist (the routes answer 404 with this message)."""


# --- creating ----------------------------------------------------------------------------------
def resolve_variants(session: Session, settings: Settings, variant_a: str,
                     variant_b: str) -> tuple[Target, Target]:
    """Both variants, served by one backend: an adapter fixes its run's backend and a base
    model follows it; else 422 naming both."""
    ids = {"variant_a": variant_a.strip(), "variant_b": variant_b.strip()}
    for field, value in ids.items():
        if not value:
            raise JobInputError(field, "choose a model id: <base> or <base>@job-<N> "
                                "(GET /v1/models lists them)")
    # Adapters first: a run's adapter is served by its backend, and a base model follows it.
    order = sorted(ids, key=lambda f: parse_id(ids[f])[1] is None)
    targets: dict[str, Target] = {}
    for field in order:
        adapters = [t for t in targets.values() if t.kind == "adapter"]
        backend = adapters[0].backend if adapters and parse_id(ids[field])[1] is None else None
        try:
            targets[field] = resolve(session, settings, ids[field], backend=backend)
        except InferenceError as exc:
            raise JobInputError(field, exc.message, status_code=exc.status) from None
    a, b = targets["variant_a"], targets["variant_b"]
    if a.backend != b.backend:
        raise JobInputError("variant_b", f"{a.id} is served by {a.backend} and {b.id} by "
                            f"{b.backend}; an arena's two variants must share a backend: "
                            "compare runs trained with the same backend")
    return targets["variant_a"], targets["variant_b"]


def _distinct(prompts: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    seen, out = set(), []
    for messages in prompts:
        key = tuple((m.get("role"), m.get("content")) for m in messages)
        if key not in seen:
            seen.add(key)
            out.append(messages)
    return out


def _pick(prompts: list[list[dict[str, Any]]], n: int, seed: int) -> list[list[dict[str, Any]]]:
    """Distinct prompts, shuffled with the arena's seed, the first n."""
    prompts = _distinct(prompts)
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def gather_prompts(session: Session, source: dict[str, Any], n: int,
                   seed: int) -> tuple[list[list[dict[str, Any]]], str, int | None]:
    """(prompts, the source in words, the run whose held-out split it is)."""
    kind = source.get("kind")
    if kind == "split":
        job_id = source.get("job_id")
        job = session.get(Job, job_id) if isinstance(job_id, int) else None
        if job is None:
            raise JobInputError("source.job_id", f"job {job_id} does not exist", 404)
        rows = read_split(Path(job.run_dir)) if job.run_dir else []
        if not rows:
            raise JobInputError("source.job_id", f"job {job.id} held out no rows: train it "
                                "with eval_fraction > 0 (or pick a dataset or paste prompts)")
        prompts = [prompt_messages(r["prompt"], i + 1) for i, r in enumerate(rows)
                   if r.get("prompt")]
        return _pick(prompts, n, seed), f"held-out split of job {job.id}", job.id
    if kind == "dataset":
        name = str(source.get("dataset") or "").strip()
        entry = session.get(DatasetEntry, name) if name else None
        if entry is None:
            raise JobInputError("source.dataset", f"no registered dataset {name!r} "
                                "(GET /api/datasets lists them)", 404)
        if entry.kind != "kto":
            raise JobInputError("source.dataset", f"{name} is an SFT dataset; pick a KTO "
                                "dataset (prompt, completion, label) or paste prompts")
        try:
            rows = load_kto_dataset(entry.path)
        except DatasetError as exc:
            raise JobInputError("source.dataset", f"{name}: {exc}") from None
        return _pick([r["prompt"] for r in rows], n, seed), f"dataset {name}", None
    if kind == "prompts":
        texts = [t.strip() for t in source.get("prompts") or [] if isinstance(t, str)]
        texts = [t for t in texts if t]
        if any(len(t) > PROMPT_MAX for t in texts):
            raise JobInputError("source.prompts", f"a prompt is longer than {PROMPT_MAX} "
                                "characters; shorten it")
        prompts = [[{"role": "user", "content": t}] for t in texts][:n]
        return prompts, f"{len(prompts)} pasted prompt{'' if len(prompts) == 1 else 's'}", None
    raise JobInputError("source.kind", "use split (a run's held-out rows), dataset or prompts")


def create_arena(session: Session, settings: Settings, *, variant_a: str, variant_b: str,
                 source: dict[str, Any], n: int = 20, seed: int | None = None,
                 max_tokens: int | None = None, temperature: float | None = None,
                 force: bool = False) -> Arena:
    """Resolve, gather, queue the generate job and record the arena; or the 4xx that says
    what to change (a job that won't fit in memory: the jobs API's 409/422 with the plan)."""
    if not 1 <= n <= N_MAX:
        raise JobInputError("n", f"ask for 1 to {N_MAX} prompts")
    a, b = resolve_variants(session, settings, variant_a, variant_b)
    seed = random.randrange(2**31) if seed is None else seed
    prompts, words, source_job = gather_prompts(session, source, n, seed)
    if not prompts:
        raise JobInputError("source", f"the {words} gave no prompts; pick another source")
    params: dict[str, Any] = {"seed": seed}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if temperature is not None:
        params["temperature"] = temperature
    try:
        job = create_generate_job(
            session, settings, backend=a.backend, model_a=a.base, adapter_a=a.adapter or "",
            model_b=b.base, adapter_b=b.adapter or "", prompts=prompts, params=params,
            name=f"arena: {a.id} vs {b.id}"[:200], force=force)
    except JobInputError as exc:
        if exc.field == "plan":  # won't fit in memory: a conflict with this machine, 409
            raise JobInputError("plan", exc.message, 409, exc.extra) from None
        raise
    arena = Arena(job_id=job.id, variant_a=a.id, variant_b=b.id, source=words,
                  source_job_id=source_job, n=len(prompts), seed=seed)
    session.add(arena)
    session.commit()
    session.refresh(arena)
    return arena


# --- reading -----------------------------------------------------------------------------------
def get_arena(session: Session, arena_id: int) -> Arena:
    arena = session.get(Arena, arena_id)
    if arena is None:
        raise ArenaNotFound(f"arena {arena_id} does not exist")
    return arena


def list_arenas(session: Session, limit: int = 200) -> list[Arena]:
    return list(session.exec(select(Arena).order_by(col(Arena.id).desc()).limit(limit)))


def judged_count(session: Session, arena_id: int) -> tuple[int, int]:
    """(judged, pairs) of an arena."""
    total = session.exec(select(func.count()).select_from(ArenaPair)
                         .where(ArenaPair.arena_id == arena_id)).one()
    judged = session.exec(select(func.count()).select_from(ArenaPair).where(
        ArenaPair.arena_id == arena_id, col(ArenaPair.verdict).is_not(None))).one()
    return judged, total


def public(session: Session, arena: Arena) -> dict[str, Any]:
    """An arena as the API answers it: its fields, its job's status and progress, counts."""
    job = session.get(Job, arena.job_id)
    ready = ensure_pairs(session, arena)
    judged, total = judged_count(session, arena.id)
    return {"id": arena.id, "created_at": arena.created_at, "job_id": arena.job_id,
            "variant_a": arena.variant_a, "variant_b": arena.variant_b,
            "source": arena.source, "source_job_id": arena.source_job_id, "n": arena.n,
            "seed": arena.seed, "status": job.status.value if job else "deleted",
            "step": job.step if job else 0, "total_steps": job.total_steps if job else None,
            "ready": ready, "judged": judged, "total": total if ready else arena.n}


def not_ready(session: Session, arena: Arena) -> str:
    """Why an arena has no pairs to judge yet, and what to do."""
    job = session.get(Job, arena.job_id)
    if job is None:
        return f"arena {arena.id}'s generate job is gone"
    if job.status == JobStatus.succeeded:
        return (f"job {job.id} succeeded but wrote no answers for both variants; "
                "create the arena again")
    if job.status.is_final or job.status == JobStatus.interrupted:
        why = f": {job.error}" if job.error else ""
        return (f"the answers are not all there: generate job {job.id} {job.status.value}"
                f"{why}. Resume it from /jobs/{job.id} (POST /api/jobs/{job.id}/resume)")
    return (f"the answers are still being generated: job {job.id} is {job.status.value} "
            f"({job.step}/{job.total_steps or 2 * arena.n} answers)")


def next_pair(session: Session, arena: Arena) -> ArenaPair | None:
    """The first unjudged pair; None when all are judged. JobStateError (409) before the
    generate job has succeeded."""
    if not ensure_pairs(session, arena):
        raise JobStateError(not_ready(session, arena))
    return session.exec(select(ArenaPair).where(
        ArenaPair.arena_id == arena.id, col(ArenaPair.verdict).is_(None))
        .order_by(ArenaPair.index)).first()


def blind(pair: ArenaPair) -> dict[str, Any]:
    """A pair as the person sees it: left and right, no variant names."""
    left, right = ((pair.answer_a, pair.answer_b) if pair.a_on_left
                   else (pair.answer_b, pair.answer_a))
    return {"pair_id": pair.id, "index": pair.index, "messages": pair.messages,
            "left": left, "right": right}


def get_pair(session: Session, arena: Arena, pair_id: int) -> ArenaPair:
    pair = session.get(ArenaPair, pair_id)
    if pair is None or pair.arena_id != arena.id:
        raise ArenaNotFound(f"arena {arena.id} has no pair {pair_id}")
    return pair


# --- judging -----------------------------------------------------------------------------------
def _side(arena: Arena, job: Job | None, which: str) -> dict[str, Any]:
    """model, variant, adapter, job_id of one variant, from what the generate job ran."""
    variant = arena.variant_a if which == "a" else arena.variant_b
    base, run_id = parse_id(variant)
    params = job.params if job else {}
    adapter = params.get(f"adapter_{which}") or ""
    return {"model": base, "variant": variant, "adapter": adapter, "job_id": run_id}


def judge(session: Session, arena: Arena, pair: ArenaPair, side: str) -> list[Feedback]:
    """Store a verdict (left, right, both_good, both_bad) in variant terms and replace the
    pair's feedback rows with one row per answer, in one transaction."""
    verdict = results.to_variant(side, pair.a_on_left)
    job = session.get(Job, arena.job_id)
    params = job.params if job else {}
    sampling = {k: params[k] for k in ("max_tokens", "temperature", "top_p", "seed")
                if k in params}
    session.exec(delete(Feedback).where(col(Feedback.arena_pair_id) == pair.id))
    rows = []
    for which, label in zip(("a", "b"), results.labels(verdict), strict=True):
        base = {**_side(arena, job, which), "messages": pair.messages, "sampling": sampling,
                "answer": pair.answer_a if which == "a" else pair.answer_b,
                "source": "arena", "arena_pair_id": pair.id}
        rows += feedback_store.add_rows(session, base, label, commit=False)
    pair.verdict = verdict
    pair.judged_at = datetime.now(UTC)
    session.add(pair)
    session.add_all(rows)
    session.commit()
    for row in rows:
        session.refresh(row)
    return rows


def arena_results(session: Session, arena: Arena) -> dict[str, Any]:
    verdicts = session.exec(select(ArenaPair.verdict).where(ArenaPair.arena_id == arena.id))
    return {"variant_a": arena.variant_a, "variant_b": arena.variant_b,
            **results.tally(verdicts.all())}


def latest_for_run(session: Session, job: Job) -> Arena | None:
    """The newest arena where this run's adapter is a variant (its page shows it)."""
    ident = f"{job.model}@job-{job.id}"
    return session.exec(select(Arena).where(
        (Arena.variant_a == ident) | (Arena.variant_b == ident))
        .order_by(col(Arena.id).desc())).first()
