"""The generate job: two variants (a model, with or without an adapter) answer the same
prompts, one after the other, into ``<run_dir>/answers.jsonl`` (an arena's answers).

``create_generate_job`` is what the arena calls; ``POST /api/jobs`` with method generate
calls ``create_generate`` (app/web/api/jobs.py), so both are checked the same way: the knobs
(contract GenerateArgs), the prompts file, the models, the adapters (folders inside the
allowed paths, of this backend, trained on their variant's model) and the memory plan
(app/planner/inference.py generate_plan, the larger variant).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.config import Settings
from app.errors import JobInputError
from app.jobs.service import (
    adapter_base,
    adapter_folder,
    check_adapter_base,
    check_plan,
    checked_params,
    method_spec,
    model_names,
    resolve_model,
    save_job,
)
from app.models import Job, JobCreate
from app.paths import local_path

ROLES = ("system", "user", "assistant")
MAX_PROMPTS = 10_000
PROMPTS_DIR = "prompts"  # under the home: the run folder does not exist before the job


def check_prompts(path: Path) -> int:
    """The number of prompts in a prompts file (one ``{"messages": [...]}`` a line), or the
    422 naming the first bad line."""
    shown = path.name
    count = 0
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                problem = _prompt_problem(line)
                if problem:
                    raise JobInputError("dataset", f"{shown} line {number}: {problem}; each "
                                        'line is {"messages": [{"role": "user", "content": '
                                        '"..."}]}')
                count += 1
    except (OSError, UnicodeDecodeError) as exc:
        raise JobInputError("dataset", f"cannot read the prompts file {path}: {exc}") from None
    if count == 0:
        raise JobInputError("dataset", f"{shown} holds no prompts; give at least one line "
                            '{"messages": [{"role": "user", "content": "..."}]}')
    if count > MAX_PROMPTS:
        raise JobInputError("dataset", f"{shown} holds {count} prompts; at most {MAX_PROMPTS}"
                            " answer in one job")
    return count


def _prompt_problem(line: str) -> str | None:
    try:
        row = json.loads(line)
    except ValueError:
        return "not JSON"
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return 'no "messages" list'
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES \
                or not isinstance(m.get("content"), str):
            return f"a message needs a role ({', '.join(ROLES)}) and text content"
    return None


def generate_job(session: Session, data: JobCreate, params: dict[str, Any], model_path: str,
                 settings: Settings) -> Job:
    """An unsaved generate Job from a checked submission (params already hold the knobs with
    defaults): the adapters and model B as absolute folders, the plan checked unless
    forced. ``data.dataset`` is the prompts file's absolute path."""
    given = data.dataset.strip()
    if not given:
        raise JobInputError("dataset", "give the prompts file: the absolute path of a JSONL "
                            'file with one {"messages": [...]} per line')
    prompts = local_path(given, settings, "dataset")
    if not prompts.is_file():
        raise JobInputError("dataset", f"prompts file {prompts} does not exist")
    count = check_prompts(prompts)
    model_b = params["model_b"].strip()
    try:
        model_b_path = resolve_model(session, model_b, settings) if model_b else ""
    except JobInputError as exc:
        raise JobInputError("params.model_b", f"model_b: {exc.message}") from None
    adapters = {}
    for side, model, path in (("a", data.model, model_path),
                              ("b", model_b or data.model, model_b_path or model_path)):
        value = params[f"adapter_{side}"].strip()
        if not value:
            adapters[side] = ""
            continue
        field = f"params.adapter_{side}"
        folder = adapter_folder(value, data.backend, field, settings)
        base = adapter_base(folder)
        check_adapter_base(field, f"the adapter in {folder}", base, model_names(base), model,
                           path)
        adapters[side] = str(folder)
    params = {**params, "adapter_a": adapters["a"], "model_b": model_b_path,
              "adapter_b": adapters["b"]}
    if not data.force:
        check_plan(model_path, data.backend, "generate", params)
    name = data.name.strip() or f"generate-{Path(data.model.strip().rstrip('/')).name}"
    return Job(name=name, backend=data.backend, method="generate", model=data.model.strip(),
               dataset=str(prompts), params=params, model_path=model_path,
               dataset_path=str(prompts), total_steps=2 * count)


def create_generate(session: Session, data: JobCreate, settings: Settings) -> Job:
    """Check a generate job's submission (as validate_job does a training job's) and queue
    it; JobInputError (a 422, or the plan's refusal) names what is wrong."""
    params = checked_params(method_spec(data.backend, "generate"), data.params)
    model_path = resolve_model(session, data.model, settings)
    return save_job(session, generate_job(session, data, params, model_path, settings),
                    settings)


def write_prompts(settings: Settings, prompts: list[list[dict]]) -> Path:
    """``<home>/prompts/<uuid>.jsonl``, one ``{"messages": [...]}`` a line."""
    folder = settings.home_dir / PROMPTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for messages in prompts:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def create_generate_job(session: Session, settings: Settings, *, backend: str, model_a: str,
                        adapter_a: str, model_b: str, adapter_b: str,
                        prompts: list[list[dict]], params: dict[str, Any], name: str,
                        force: bool = False) -> Job:
    """Queue a generate job: variant A (``model_a`` + ``adapter_a``) and variant B answer
    ``prompts`` (each a list of chat messages). ``params``: max_tokens, temperature, top_p,
    seed (GenerateArgs; defaults for the rest). Writes the prompts file, checks everything
    as ``POST /api/jobs`` does (JobInputError: 422, or the plan's refusal), adds and commits
    the queued job. The caller wakes the supervisor."""
    if not prompts:
        raise JobInputError("prompts", "no prompts to answer; give at least one")
    path = write_prompts(settings, prompts)
    try:
        data = JobCreate(name=name, backend=backend, method="generate", model=model_a,
                         dataset=str(path), force=force,
                         params={**params, "adapter_a": adapter_a or "",
                                 "model_b": model_b or "", "adapter_b": adapter_b or ""})
        return create_generate(session, data, settings)
    except BaseException:
        session.rollback()
        path.unlink(missing_ok=True)
        raise
