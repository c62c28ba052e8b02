"""What every worker shares: the command line, the stop flag, the run folder, the error classes
and their ``error`` events, and ``run_worker``, the frame each backend's ``__main__`` fills.

    stop flag → command line (and the environment ML libraries read at import) → config file →
    run folder → events.jsonl → the backend's body → ``done``

A worker is started by the server in its own process session, cwd = repo root, stdout and
stderr going to ``<run_dir>/worker.log``. Everything the server needs is in
``<run_dir>/events.jsonl``; the log holds free text and tracebacks. Exit code: 0 succeeded or
cancelled, 1 failed, 2 bad command line (argparse's).

SIGTERM (or SIGINT) = cancel. Before training it stops at once (nothing to save yet); during
training the handler only sets a flag, the training loop saves a checkpoint at the end of the
current step, then the adapter, and the run ends ``cancelled``.

Plain Python (no torch, no mlx): errors are recognised by their class and message, so a
failure before any ML library loads is described as well as one inside training.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.eval_split import EVAL_SPLIT_FILE, split_rows, write_split
from contract.events import EVENTS_FILE, EventWriter
from contract.job_config import ConfigError, JobConfig, parse_config, read_config_file
from contract.knobs import ParamError
from contract.ranks import failure_event, write_rank_end, write_rank_start
from contract.rows import DatasetError, Row, kto_stats, load_kto_dataset
from workers.checkpoints import NoIntactCheckpoint, resume_from_intact
from workers.keep_awake import KeepAwake, keep_awake
from workers.memory import MemorySampler
from workers.peer_watch import Ending, PeerWatch
from workers.world import ONE_PROCESS, World, culprit, single, started_at

# Read by huggingface_hub / datasets / tokenizers at import time: set before any of them loads.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # never download: a cached hub id works, an uncached one fails fast
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# --- errors -----------------------------------------------------------------------------------
class Cancelled(BaseException):  # noqa: N818 - like KeyboardInterrupt, not caught by `except Exception`
    """SIGTERM before training started: nothing worth saving yet, so stop at once."""


class ModelNotFound(OSError):  # noqa: N818
    """The model is neither a loadable local folder nor a hub id in the local cache."""


class HintedError(ValueError):
    """A failure whose fix is known where it is raised: ``hint`` says what to pick instead,
    ``error_type`` names it in the ``error`` event (a backend's DeviceError is one)."""

    error_type = "error"

    def __init__(self, message: str, hint: str):
        super().__init__(f"{message} {hint}")
        self.message = message
        self.hint = hint


class DiskFull(OSError):  # noqa: N818
    """The disk filled up while a checkpoint was being written."""

    def __init__(self, step: int, folder: Path, previous: Path | None):
        self.step, self.folder, self.previous = step, folder, previous
        super().__init__(errno.ENOSPC, f"disk full while saving the checkpoint at step {step}; "
                         f"free space on the disk that holds {folder.parent} "
                         f"({free_space(folder.parent)} free now)")


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def loading_model(source: str, says: str | None = None) -> Iterator[None]:
    """Around a library's model loader: missing or broken files (OSError) become ModelNotFound,
    whose message is ``says`` (default: the folder holds no loadable model) and the cause."""
    try:
        yield
    except OSError as exc:
        raise ModelNotFound(f"{says or f'the folder {source} holds no loadable model'}: {exc}") \
            from exc


MemoryHint = Callable[[BaseException, str], str | None]  # (error, lowered message) -> hint


def describe_error(exc: BaseException, memory_hint: MemoryHint | None = None) -> dict[str, Any]:
    """The fields of an ``error`` event: error_type, message, hint. ``memory_hint`` is the
    backend's: the hint when ``exc`` is its out-of-memory failure, else None."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ParamError):
        return _error("invalid_params", message, f"Change the parameter {exc.field}: "
                      f"{exc.message}", field=exc.field)
    if isinstance(exc, ConfigError):
        return _error("invalid_config", message, "The worker's config.json is wrong; this is a "
                      "bug in whatever wrote it.", field=exc.field)
    if isinstance(exc, DatasetError):
        where = f"row {exc.row} of the dataset" if exc.row is not None else "the dataset file"
        return _error("dataset", message, f"Fix {where}, then launch again. Each row needs "
                      "prompt, completion and label (true or false), or prompt, chosen and "
                      "rejected.", row=exc.row)
    if isinstance(exc, ModelNotFound):
        return _error("model_not_found", message, "Check the model's folder path, or that the "
                      "hub id is in the local Hugging Face cache: workers run offline unless "
                      "the server is started with PROSPECT_ALLOW_DOWNLOADS=1 (then a hub id is "
                      "downloaded once and cached).")
    if isinstance(exc, HintedError):
        return _error(exc.error_type, exc.message, exc.hint)
    if isinstance(exc, NoIntactCheckpoint):
        return _error("checkpoint_damaged", message, "Every checkpoint of this run is damaged, "
                      "so it cannot be resumed: clone the job to train it again from the "
                      "start.")
    if isinstance(exc, DiskFull):
        kept = (f"The previous checkpoint ({exc.previous.name}) is intact: resume the job "
                "and it continues from there." if exc.previous else
                "No earlier checkpoint exists, so a resume starts from step 0.")
        return _error("disk_full", exc.strerror, "Free disk space (delete old runs or other "
                      f"files), or lower save_total_limit. {kept}", step=exc.step)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return _error("disk_full", message, "The disk is full: free space (delete old runs or "
                      "other files), then resume the job from its last checkpoint.")
    lowered = message.lower()
    hint = memory_hint(exc, lowered) if memory_hint is not None else None
    if hint is not None:
        return _error("out_of_memory", message, hint)
    if "chat template" in lowered or "chat_template" in lowered:
        return _error("chat_template", message, "This model's tokenizer has no chat template. "
                      "Use an instruct/chat model, or add a chat_template to its "
                      "tokenizer_config.json.")
    return _error(type(exc).__name__, message,
                  "An unexpected error: worker.log in the run folder has the full traceback.")


def _error(error_type: str, message: str, hint: str, **extra: Any) -> dict[str, Any]:
    return {"error_type": error_type, "message": message, "hint": hint, **extra}


# --- the stop flag ----------------------------------------------------------------------------
class StopFlag:
    """Set by SIGTERM/SIGINT. While ``interrupt`` is on (loading, data prep) the first signal
    also raises Cancelled in the main thread, so a long model load stops at once; training
    turns it off and only the flag remains, which the loop reads at each step end."""

    def __init__(self):
        self._event = threading.Event()
        self.interrupt = False

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        first = not self._event.is_set()
        self._event.set()
        if first and self.interrupt:
            self.interrupt = False
            raise Cancelled(f"stopped by {signal.Signals(signum).name} before training")

    def arm(self) -> None:
        """Interrupt from now on, and at once if a signal already came."""
        self.interrupt = True
        if self._event.is_set():
            self.interrupt = False
            raise Cancelled("stopped by a signal before training")

    def __call__(self) -> bool:
        return self._event.is_set()

    @staticmethod
    def ignore_further() -> None:
        # After the done event there is nothing left to stop. SIG_IGN, unlike a Python
        # handler, stays in place while the interpreter shuts down, so a late SIGTERM
        # cannot turn a clean exit into death by signal.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


# --- one run ----------------------------------------------------------------------------------
@dataclass
class RunResult:
    status: str  # "succeeded" | "cancelled"
    summary: dict[str, Any] = field(default_factory=dict)


class SilentEvents:
    """The events of a rank other than 0 (rank 0 alone reports): its log has the free text."""

    def emit(self, type: str, **fields) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass
class Session:
    """What a backend's body gets beside its job: where events go, the memory sampler (the
    body starts it when the heavy part begins), the stop flag, and keep-awake."""

    events: EventWriter | SilentEvents
    sampler: MemorySampler
    stop: StopFlag
    awake: KeepAwake = field(default_factory=KeepAwake)
    world: World = ONE_PROCESS  # which process of a distributed run this is
    ending: Ending = field(default_factory=Ending)  # the done event is written once

    def keep_awake(self) -> None:
        self.awake = keep_awake()  # on macOS: no idle sleep until this process ends


@dataclass(frozen=True)
class Backend:
    """What ``run_worker`` needs to know of one backend."""

    name: str  # "torch" | "mlx": the methods of contract.knobs it runs
    doc: str | None  # its __main__'s docstring, for --help
    environment: dict[str, str]  # set (unless set already) before any ML library loads
    checkpoint_files: tuple[str, ...]  # what a whole checkpoint of it holds
    is_checkpoint: Callable[[Path], bool]  # whether a folder is a resumable checkpoint
    body: Callable[[JobConfig, Session], RunResult]  # the work; imports the ML libraries
    describe: Callable[[BaseException, dict], dict[str, Any]]  # (error, raw config) -> fields
    rank: Callable[[], World] = single  # this process's place, from its launcher's environment


def run_worker(backend: Backend, argv: list[str] | None = None, *, silent: bool = False) -> int:
    """``python -m workers.<backend> --config <run_dir>/config.json``: every failure becomes
    an ``error`` event with a hint, and every run ends with one ``done`` event. Under a
    distributed launch (``backend.rank``) only rank 0 writes events, and every rank leaves
    its start and end in ranks/ (contract/ranks.py). ``silent``: write no events at all."""
    stop = StopFlag().install()  # first: a cancel that comes early is still seen
    cli = parse_cli(f"python -m workers.{backend.name}", backend.doc, argv, backend.environment)
    world = backend.rank()
    raw, error = read_raw(cli.config)
    folder = run_dir_of(raw, cli.config)
    folder.mkdir(parents=True, exist_ok=True)
    quiet = silent or world.rank != 0
    events = SilentEvents() if quiet else EventWriter(folder / EVENTS_FILE)
    session = Session(events, MemorySampler(events.emit, interval=cli.memory_interval), stop,
                      world=world)
    if world.distributed:
        write_rank_start(folder, world.rank, world.size, world.local_rank, started_at())
        PeerWatch(world, folder, events.emit, session.ending, events.close).start()
    try:
        stop.arm()
        if error is not None:
            raise error
        job = parse_config(resume_from_intact(raw, backend.checkpoint_files, events.emit),
                           backend.name, backend.is_checkpoint)  # a damaged one: the one before
        result = backend.body(job, session)
    except Cancelled as exc:
        print(f"cancelled: {exc}", flush=True)
        result = RunResult("cancelled", {"steps": 0})
    except Exception as exc:
        stop.interrupt = False
        traceback.print_exc()
        sys.stderr.flush()
        return fail(session, folder, backend.describe(exc, raw), exc)
    return end(session, folder, result)


def fail(session: Session, folder: Path, fields: dict[str, Any], exc: BaseException) -> int:
    """The ``error`` event and ``done`` failed. In a distributed run this rank's end file
    first (the others may be asking who failed); rank 0 reports the rank that failed first
    when its own error is only the consequence (contract/ranks.py, workers/world.py)."""
    world = session.world
    if not session.ending.claim():  # the peer watch has ended the run already
        return 1
    if world.distributed:
        write_rank_end(folder, world.rank, "failed", fields)
        if world.rank == 0 and (other := culprit(folder, world.rank, exc)) is not None:
            print(f"rank {other.rank} failed first: reporting its error", flush=True)
            fields = failure_event(other)
    session.events.emit("error", **fields)
    finish(session, RunResult("failed", {}))
    return 1


def end(session: Session, folder: Path, result: RunResult) -> int:
    """``done`` with the body's result; a distributed rank 0 that was stopped because another
    rank failed or died reports that rank's error and ``done`` failed instead."""
    world = session.world
    if not session.ending.claim():  # the peer watch has ended the run already
        return 1
    if world.distributed:
        write_rank_end(folder, world.rank, result.status)
        if world.rank == 0 and result.status == "cancelled" \
                and (other := culprit(folder, world.rank, None)) is not None:
            print(f"stopped because rank {other.rank} failed: reporting its error", flush=True)
            session.events.emit("error", **failure_event(other))
            finish(session, RunResult("failed", result.summary))
            return 1
    finish(session, result)
    return 0


def finish(session: Session, result: RunResult) -> None:
    """The ``done`` event, with the memory peaks the sampler saw; nothing is stopped after."""
    if not session.ending.claim():  # the peer watch ended the run (workers/peer_watch.py)
        return
    StopFlag.ignore_further()
    session.awake.stop()
    session.sampler.stop()  # a last memory event, and the peaks it saw
    session.events.emit("done", status=result.status,
                        summary={**result.summary, **session.sampler.peaks()})
    session.events.close()


def parse_cli(prog: str, doc: str | None, argv: list[str] | None,
              environment: dict[str, str]) -> argparse.Namespace:
    """The workers' command line; the environment defaults are set before any ML import."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--config", type=Path, required=True, help="the run's config.json")
    parser.add_argument(
        "--memory-interval", type=float, default=2.0, help="seconds between memory events"
    )
    cli = parser.parse_args(argv)
    for key, value in environment.items():
        os.environ.setdefault(key, value)
    return cli


def read_raw(path: Path) -> tuple[dict, Exception | None]:
    """The config file's object, or {} and the error (raised once events can be written)."""
    try:
        return read_config_file(path), None
    except Exception as exc:
        return {}, exc


def run_dir_of(raw: dict, config_path: Path) -> Path:
    """The config's run_dir when it is usable, else the config file's folder."""
    value = raw.get("run_dir")
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value)
    return config_path.resolve().parent


def read_kto_rows(job: JobConfig, events: EventWriter | SilentEvents) -> list[Row]:
    """The KTO rows of the job's dataset, and a ``log`` event counting them (a warning when
    the desirable/undesirable balance is off the KTO paper's range)."""
    rows = load_kto_dataset(job.dataset)
    level, line = kto_stats_line(kto_stats(rows), job.args.desirable_weight,
                                 job.args.undesirable_weight)
    events.emit("log", level=level, message=line)
    return rows


def split_for_eval(job: JobConfig, rows: list[Row],
                   events: EventWriter | SilentEvents) -> tuple[list[Row], list[Row]]:
    """(train rows, held-out rows) by the job's ``eval_fraction`` and ``seed``
    (contract/eval_split.py); the held-out rows are recorded in the run folder and counted in
    a ``log`` event. A split that leaves fewer than 2 rows on a side is an error naming the
    fix (KTO's batches need 2)."""
    fraction = getattr(job.args, "eval_fraction", 0.0)
    if fraction <= 0:
        return rows, []
    train, held, indices = split_rows(rows, fraction, job.args.seed)
    if len(held) < 2 or len(train) < 2:
        raise HintedError(
            f"eval_fraction {fraction:g} of {len(rows)} rows holds out {len(held)} and trains "
            f"on {len(train)}: KTO needs at least 2 on each side",
            "raise eval_fraction, add rows, or set eval_fraction to 0")
    write_split(job.run_dir, held, indices)
    desirable = sum(1 for r in held if r["label"])
    events.emit("log", level="info", message=(
        f"held out {len(held)} of {len(rows)} rows for evaluation ({desirable} desirable, "
        f"{len(held) - desirable} undesirable), recorded in {EVAL_SPLIT_FILE}"))
    return train, held


def kto_stats_line(stats: dict, desirable_weight: float,
                   undesirable_weight: float) -> tuple[str, str]:
    line = (
        f"{stats['rows']} rows: {stats['desirable']} desirable, {stats['undesirable']} undesirable"
    )
    low_high = stats["desirable_weight_range"]
    if low_high is None:
        return "warning", line + "; KTO learns best from both kinds, one side is empty"
    ratio = desirable_weight * stats["desirable"] / (undesirable_weight * stats["undesirable"])
    if not 1 <= ratio <= 4 / 3 + 1e-9:
        line += (
            f"; λD·nD/(λU·nU) = {ratio:.2f}, the KTO paper asks for 1 to 1.33: with "
            f"undesirable_weight 1 set desirable_weight in [{low_high[0]}, {low_high[1]}]"
        )
        return "warning", line
    return "info", line
