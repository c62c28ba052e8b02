"""A generate job (an arena's answers): two variants answer the same prompts. Reads top to
bottom:

    read the prompts → skip the answers already written (a resumed job) → variant A: load its
    model, attach its adapter, answer each prompt → variant B: the same model with another
    adapter, or A's model freed and B's loaded → answer each prompt → the ``artifact`` event

Backend-neutral: the model comes from a serving backend (workers/torch/serve.py,
workers/mlx/serve.py: one base model, adapters attached by name and switched per answer), and
each answer is made as the inference worker makes one (workers/serve.py's ``produce``: the
context clamp, the same text rules). ``<run_dir>/answers.jsonl`` gets one line per answer,
appended and flushed as it finishes::

    {"index": 0, "variant": "a", "text": "...", "completion_tokens": 16, "finish_reason": "length"}

Every answer is seeded with (seed, index), so a rerun (or a resumed job) writes the same
answers, and A and B of one prompt draw the same random numbers. SIGTERM lets the answer in
hand finish, then the job ends ``cancelled``; the answers so far stay and a resumed job writes
only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.job_config import JobConfig
from contract.knobs import ParamError
from contract.method_args import GenerateArgs
from workers.runtime import Cancelled, HintedError, RunResult, Session
from workers.serve import Backend
from workers.serve_text import RequestError, Sampling, fit_context, produce

ANSWERS_FILE = "answers.jsonl"
VARIANTS = ("a", "b")
PROMPT_SHAPE = ('each line is a JSON object {"messages": [{"role": "user", "content": "..."}, '
                '...]}: the conversation to answer')


class PromptsError(HintedError):
    """A prompts file the job cannot read, naming the line."""

    error_type = "prompts"


def hinted(exc: RequestError, where: str) -> HintedError:
    """A serving backend's refusal (chat template, adapter, context) as a job's error."""
    error = HintedError(f"{where}: {exc.message}", exc.hint or "")
    error.error_type = exc.error_type
    return error


# --- the files ------------------------------------------------------------------------------
def read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """The conversations of a prompts JSONL, one per non-blank line; PromptsError naming the
    first bad line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptsError(f"no prompts file at {path}",
                           "The job's dataset must be the prompts JSONL its arena wrote: "
                           "create the arena again.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsError(f"cannot read the prompts file {path}: {exc}",
                           f"It must be UTF-8 text where {PROMPT_SHAPE}.") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        problem = prompt_problem(line)
        if problem:
            raise PromptsError(f"line {number} of the prompts file {path}: {problem}",
                               f"Fix or remove that line; {PROMPT_SHAPE}.")
        prompts.append(json.loads(line)["messages"])
    if not prompts:
        raise PromptsError(f"the prompts file {path} holds no prompts",
                           f"Give it at least one line; {PROMPT_SHAPE}.")
    return prompts


def prompt_problem(line: str) -> str | None:
    """What is wrong with one line of a prompts file, or None."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(row, dict) or "messages" not in row:
        return "not an object with a messages list"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for n, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and m["role"]
                and isinstance(m.get("content"), str)):
            return f"message {n} must be an object with role and content strings"
    return None


def read_answers(path: Path, n_prompts: int) -> tuple[set[tuple[int, str]], int]:
    """(index, variant) of the answers already in ``path`` (a resumed job), and how many
    lines were dropped: a line cut short by a kill, or one that is no answer of these prompts.
    Dropped lines are removed from the file, so appending continues after whole lines."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set(), 0
    done: set[tuple[int, str]] = set()
    keep: list[str] = []
    for line in lines:
        key = answer_key(line, n_prompts)
        if key is not None and key not in done:
            done.add(key)
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped or (lines and not path.read_bytes().endswith(b"\n")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
        tmp.replace(path)
    return done, dropped


def answer_key(line: str, n_prompts: int) -> tuple[int, str] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        return None
    index, variant = row.get("index"), row.get("variant")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_prompts:
        return None
    return (index, variant) if variant in VARIANTS else None


def answer_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s answers: stable across runs and machines, 32 bits."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --- the job --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str  # "a" | "b"
    model: str
    adapter: str | None

    def describe(self) -> str:
        side = f"adapter {self.adapter}" if self.adapter else "no adapter"
        return f"variant {self.name.upper()} ({self.model}, {side})"


def variants(job: JobConfig[GenerateArgs]) -> list[Variant]:
    args = job.args
    return [Variant("a", job.model, args.adapter_a or None),
            Variant("b", args.model_b.strip() or job.model, args.adapter_b or None)]


@dataclass
class Tally:
    prompts: int
    answers: int  # lines in answers.jsonl, earlier runs' included
    generated: int = 0  # written by this run
    tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"answers": self.answers, "prompts": self.prompts, "generated": self.generated,
                "completion_tokens": self.tokens,
                "tokens_per_s": round(self.tokens / self.seconds, 3) if self.seconds else 0.0,
                "answers_path": ANSWERS_FILE}


def run(job: JobConfig[GenerateArgs], session: Session, make_backend: Callable[[], Backend],
        on_load: Callable[[Backend], None] | None = None) -> RunResult:
    """The whole job over one backend class; ``on_load(backend)`` runs after each model load
    (the memory probe). Returns succeeded, or cancelled after a SIGTERM."""
    args, events = job.args, session.events
    if args.top_p <= 0:
        raise ParamError("top_p", "must be above 0 (1 keeps every token)")
    prompts = read_prompts(job.dataset)
    path = job.run_dir / ANSWERS_FILE
    done, dropped = read_answers(path, len(prompts))
    total = len(VARIANTS) * len(prompts)
    tally = Tally(len(prompts), len(done))
    if dropped:
        events.emit("log", level="warning", message=f"dropped {dropped} unreadable lines of "
                    f"{ANSWERS_FILE} (a line cut short when the job was stopped)")
    if done:
        events.emit("log", level="info", message=f"resuming: {len(done)} of {total} answers "
                    f"are in {ANSWERS_FILE} already")
        events.emit("progress", step=len(done), total_steps=total)
    plan = variants(job)
    backend: Any = None
    loaded = ""  # the model the backend holds
    with path.open("a", encoding="utf-8") as out:
        for variant in plan:
            todo = [i for i in range(len(prompts)) if (i, variant.name) not in done]
            if not todo:
                continue
            if session.stop():
                return RunResult("cancelled", tally.summary())
            if backend is None or loaded != variant.model:
                release(backend)
                backend = None
                try:
                    backend = load(variant, [v for v in plan if v.model == variant.model],
                                   session, make_backend, on_load)
                except Cancelled:
                    return RunResult("cancelled", tally.summary())
                loaded = variant.model
            ids = prompt_ids(backend, variant, prompts, todo)
            events.emit("status", phase="generating", message=(
                f"{variant.describe()}: {len(todo)} answers of at most {args.max_tokens} "
                f"tokens on {backend.device}"))
            for i in todo:
                line = answer(backend, variant, i, ids[i], args)
                seconds = line.pop("_seconds")
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                out.flush()
                done.add((i, variant.name))
                tally.answers, tally.generated = len(done), tally.generated + 1
                tally.tokens += line["completion_tokens"]
                tally.seconds += seconds
                events.emit("progress", step=tally.answers, total_steps=total,
                            tokens_per_s=tally.summary()["tokens_per_s"],
                            eta_s=eta(tally, total))
                if session.stop():  # SIGTERM: the answer in hand is written, stop here
                    return RunResult("cancelled", tally.summary())
    events.emit("artifact", kind="answers", path=str(path), answers=tally.answers)
    return RunResult("succeeded", tally.summary())


def load(variant: Variant, sharing: list[Variant], session: Session,
         make_backend: Callable[[], Backend], on_load: Callable[[Backend], None] | None) -> Any:
    """A backend with ``variant``'s model loaded and the adapters of every variant that shares
    it attached (a misfit adapter fails before any answer). SIGTERM during the load stops it
    at once (Cancelled); afterwards it only sets the flag."""
    session.events.emit("status", phase="loading_model",
                        message=f"{variant.describe()}: loading {variant.model}")
    session.stop.arm()  # Cancelled now if a signal came, or as soon as one comes
    backend = make_backend()
    backend.load(variant.model)
    session.stop.interrupt = False
    if on_load is not None:
        on_load(backend)
    for v in sharing:
        try:
            backend.attach(v.adapter)
        except RequestError as exc:
            raise hinted(exc, f"{v.describe()}") from exc
    session.events.emit("log", level="info", message=(
        f"{variant.model} loaded on {backend.device} in {backend.dtype}, context "
        f"{backend.context_length} tokens"))
    return backend


def release(backend: Any) -> None:
    """Free a backend's model and the memory it held (before another model loads)."""
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def prompt_ids(backend: Backend, variant: Variant, prompts: list[list[dict[str, str]]],
               todo: list[int]) -> dict[int, list[int]]:
    """The rendered prompts still to answer; an error naming the first that alone fills the
    model's context (the others get the room that is left)."""
    ids = {}
    for i in todo:
        try:
            ids[i] = backend.prompt_ids(prompts[i])
            fit_context(len(ids[i]), backend.context_length, Sampling(1, 0.0, 1.0, None))
        except RequestError as exc:
            raise hinted(exc, f"prompt {i} for {variant.describe()}") from exc
    return ids


def answer(backend: Backend, variant: Variant, index: int, ids: list[int],
           args: GenerateArgs) -> dict[str, Any]:
    """One answer as its answers.jsonl line (plus ``_seconds``, the time it took)."""
    sampling = fit_context(len(ids), backend.context_length, Sampling(
        args.max_tokens, args.temperature, args.top_p, answer_seed(args.seed, index)))
    made = produce(backend, ids, variant.adapter, sampling, [], lambda: False)
    return {"index": index, "variant": variant.name, "text": made.text,
            "completion_tokens": made.completion_tokens, "finish_reason": made.finish_reason,
            "_seconds": made.seconds}


def eta(tally: Tally, total: int) -> float:
    """Seconds left at this run's pace so far (a model load still to come not counted)."""
    return round(tally.seconds / max(tally.generated, 1) * (total - tally.answers), 1)
