"""An arena's pairs, copied once from its generate job's ``<run_dir>/answers.jsonl``.

The worker appends one line per answer (``{"index", "variant": "a"|"b", "text", ...}``, all
of A, then all of B); the prompts are the job's prompts file (its dataset, one
``{"messages": [...]}`` a line). A pair is made for each prompt both variants answered.
This runs on the first read after the job has succeeded, and only then: a job still running
has half of B's answers. Idempotent: an arena with pairs is left alone, and a second request
racing the first hits the (arena_id, index) unique key and reads what the first wrote.

Which answer is shown on the left is ``random.Random(f"{seed}:{index}")``: blind to the
person, and the same layout every time the arena is read (or rebuilt from the same seed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from app.models import Arena, ArenaPair, Job, JobStatus

ANSWERS_FILE = "answers.jsonl"


def a_on_left(seed: int, index: int) -> bool:
    return random.Random(f"{seed}:{index}").random() < 0.5


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a torn last line (a worker killed mid-write) and
    lines that are not objects are skipped."""
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def prompts_of(job: Job) -> list[list[dict[str, Any]]]:
    """The conversations a generate job was asked to answer, in order."""
    path = Path(job.dataset_path or job.dataset)
    return [row.get("messages") or [] for row in read_jsonl(path)]


def answers_of(job: Job) -> dict[tuple[int, str], str]:
    """(index, "a"|"b") → the answer's text; a later line for the same answer wins."""
    out: dict[tuple[int, str], str] = {}
    for row in read_jsonl(Path(job.run_dir) / ANSWERS_FILE):
        index, variant = row.get("index"), row.get("variant")
        if isinstance(index, int) and variant in ("a", "b"):
            out[(index, variant)] = str(row.get("text", ""))
    return out


def pair_count(session: Session, arena_id: int) -> int:
    return session.exec(select(func.count()).select_from(ArenaPair)
                        .where(ArenaPair.arena_id == arena_id)).one()


def build_pairs(arena: Arena, job: Job) -> list[ArenaPair]:
    prompts = prompts_of(job)
    answers = answers_of(job)
    return [ArenaPair(arena_id=arena.id, index=i, messages=messages,
                      answer_a=answers[(i, "a")], answer_b=answers[(i, "b")],
                      a_on_left=a_on_left(arena.seed, i))
            for i, messages in enumerate(prompts)
            if (i, "a") in answers and (i, "b") in answers]


def ensure_pairs(session: Session, arena: Arena) -> bool:
    """Make the arena's pairs when its job has succeeded; True when the pairs are there."""
    if pair_count(session, arena.id):
        return True
    job = session.get(Job, arena.job_id)
    if job is None or job.status != JobStatus.succeeded:
        return False
    pairs = build_pairs(arena, job)
    if not pairs:
        return False
    session.add_all(pairs)
    try:
        session.commit()
    except IntegrityError:  # another request ingested them first
        session.rollback()
    return True
