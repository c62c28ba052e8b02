"""/api/arenas: the review arena over REST, thin handlers over app/arena/.

POST creates an arena and queues its generate job; ``/next`` hands out the next unjudged
pair blind (left and right, no variant names; 409 until the job has succeeded, 204 when every
pair is judged); a verdict is stored in variant terms and becomes feedback rows; ``/results``
is the score with its 95 % Wilson interval.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from app.arena import service
from app.models import Arena
from app.web.deps import DB_INT_MAX, SessionDep, SettingsDep, SupervisorDep

router = APIRouter(prefix="/api/arenas", tags=["arenas"])

ArenaId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="The arena's id.")]
PairId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="The pair's id.")]
ModelId = Annotated[str, Field(min_length=1, max_length=1000)]


class SplitSource(BaseModel):
    """The held-out rows of a KTO run trained with eval_fraction > 0."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["split"]
    job_id: int = Field(ge=1, le=DB_INT_MAX)


class DatasetSource(BaseModel):
    """A registered KTO dataset's prompts: distinct, shuffled with the seed, the first n."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dataset"]
    dataset: str = Field(min_length=1, max_length=200)


class PromptsSource(BaseModel):
    """Pasted prompts, one user message each."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["prompts"]
    prompts: list[Annotated[str, Field(max_length=service.PROMPT_MAX)]] = Field(
        max_length=service.N_MAX)


class ArenaCreate(BaseModel):
    """Two variants (catalog ids: ``<base>`` or ``<base>@job-<N>``) and where the prompts
    come from."""

    model_config = ConfigDict(extra="forbid")
    variant_a: ModelId
    variant_b: ModelId
    source: Annotated[SplitSource | DatasetSource | PromptsSource, Field(discriminator="kind")]
    n: int = Field(20, ge=1, le=service.N_MAX)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    force: bool = False


class VerdictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["left", "right", "both_good", "both_bad"]


class ArenaPublic(BaseModel):
    id: int
    created_at: datetime
    job_id: int
    variant_a: str
    variant_b: str
    source: str
    source_job_id: int | None
    n: int
    seed: int
    status: str
    step: int
    total_steps: int | None
    ready: bool
    judged: int
    total: int


def _arena(session: SessionDep, arena_id: int) -> Arena:
    try:
        return service.get_arena(session, arena_id)
    except service.ArenaNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("", status_code=201, response_model=ArenaPublic)
def create(data: ArenaCreate, session: SessionDep, settings: SettingsDep,
           supervisor: SupervisorDep) -> dict[str, Any]:
    arena = service.create_arena(
        session, settings, variant_a=data.variant_a, variant_b=data.variant_b,
        source=data.source.model_dump(), n=data.n, seed=data.seed,
        max_tokens=data.max_tokens, temperature=data.temperature, force=data.force)
    supervisor.wake()
    return service.public(session, arena)


@router.get("", response_model=list[ArenaPublic])
def list_arenas(session: SessionDep) -> list[dict[str, Any]]:
    """Newest first."""
    return [service.public(session, a) for a in service.list_arenas(session)]


@router.get("/{arena_id}", response_model=ArenaPublic)
def read(arena_id: ArenaId, session: SessionDep) -> dict[str, Any]:
    return service.public(session, _arena(session, arena_id))


@router.get("/{arena_id}/next", responses={204: {"description": "every pair is judged"},
                                           409: {"description": "answers not ready"}})
def next_pair(arena_id: ArenaId, session: SessionDep) -> Any:
    """The next unjudged pair, blind: {pair_id, index, messages, left, right}."""
    pair = service.next_pair(session, _arena(session, arena_id))
    if pair is None:
        return Response(status_code=204)
    return service.blind(pair)


@router.post("/{arena_id}/pairs/{pair_id}/verdict")
def verdict(arena_id: ArenaId, pair_id: PairId, body: VerdictBody,
            session: SessionDep) -> dict[str, Any]:
    """Store the verdict in variant terms (a, b, both_good, both_bad); the pair's feedback
    rows (source arena) are replaced by one row per answer."""
    arena = _arena(session, arena_id)
    try:
        pair = service.get_pair(session, arena, pair_id)
    except service.ArenaNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    rows = service.judge(session, arena, pair, body.verdict)
    judged, total = service.judged_count(session, arena.id)
    return {"pair_id": pair.id, "index": pair.index, "verdict": pair.verdict,
            "feedback_ids": [r.id for r in rows], "judged": judged, "total": total}


@router.get("/{arena_id}/results")
def results(arena_id: ArenaId, session: SessionDep) -> dict[str, Any]:
    """wins (A better), losses, ties (both good + both bad), judged, A's win rate
    ((wins + ties/2) / judged) and its 95 % Wilson interval."""
    return service.arena_results(session, _arena(session, arena_id))
