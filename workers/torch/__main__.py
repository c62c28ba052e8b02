"""Entry point: ``python -m workers.torch --config <run_dir>/config.json``.

The server starts this in its own process session, cwd = repo root, stdout and stderr going to
``<run_dir>/worker.log``. Everything the server needs is in ``<run_dir>/events.jsonl``; the log
holds free text and tracebacks. Exit code: 0 succeeded or cancelled, 1 failed, 2 bad command line.

SIGTERM (or SIGINT) = cancel. Before training it stops at once (nothing to save yet); during
training the handler only sets a flag, and the callback saves a checkpoint at the end of the
current step, after which the adapter is saved and the run ends ``cancelled``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from contract.events import EVENTS_FILE, EventWriter
from contract.rows import kto_stats, load_kto_dataset
from workers.checkpoints import TORCH_FILES, resume_from_intact
from workers.keep_awake import KeepAwake, keep_awake
from workers.memory import MemorySampler
from workers.torch.config import parse_config, read_config_file
from workers.torch.errors import Cancelled, describe_error

# Read by torch / huggingface_hub / datasets at import time, so set before any of them loads.
ENVIRONMENT = {
    "PYTORCH_ENABLE_MPS_FALLBACK": "1",  # ops MPS lacks run on the CPU instead of failing
    "HF_HUB_OFFLINE": "1",  # never download: a cached hub id works, an uncached one fails fast
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class StopFlag:
    """Set by SIGTERM/SIGINT. While ``interrupt`` is on (loading, data prep) the first signal
    also raises Cancelled in the main thread, so a long model load stops at once; training
    turns it off and only the flag remains, which the callback reads at each step end."""

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


def parse_cli(prog: str, doc: str | None, argv: list[str] | None,
              environment: dict[str, str]) -> argparse.Namespace:
    """Both workers' command line; the environment defaults are set before any ML import."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--config", type=Path, required=True, help="the run's config.json")
    parser.add_argument(
        "--memory-interval", type=float, default=2.0, help="seconds between memory events"
    )
    cli = parser.parse_args(argv)
    for key, value in environment.items():
        os.environ.setdefault(key, value)
    return cli


def main(argv: list[str] | None = None) -> int:
    stop = StopFlag().install()  # first: a cancel that comes early is still seen
    cli = parse_cli("python -m workers.torch", __doc__, argv, ENVIRONMENT)
    # TRL 1.16 still calls transformers 5's gradient_checkpointing_* aliases on every step.
    warnings.filterwarnings("ignore", message=".*will be removed in v6", category=FutureWarning)

    raw, error = _read_raw(cli.config)
    run_dir = _run_dir(raw, cli.config)
    run_dir.mkdir(parents=True, exist_ok=True)
    events = EventWriter(run_dir / EVENTS_FILE)
    sampler = MemorySampler(events.emit, interval=cli.memory_interval)
    awake = KeepAwake()
    try:
        stop.arm()
        if error is not None:
            raise error
        raw = resume_from_intact(raw, TORCH_FILES, events.emit)  # a damaged one: the one before
        job = parse_config(raw)
        if job.method == "fuse":  # no data: the adapter is merged into the model
            print(f"job {job.job_id}: torch merge of {job.params['adapter_path']}", flush=True)
            sampler.start()
            from workers.torch import merge  # torch, transformers and peft load here

            result = merge.run(job, events)
            _finish(events, sampler, awake, result.status, result.summary)
            return 0
        print(f"job {job.job_id}: torch KTO of {job.model} on {job.dataset}", flush=True)

        events.emit("status", phase="preparing_data", message=f"reading {job.dataset.name}")
        rows = load_kto_dataset(job.dataset)
        stats = kto_stats(rows)
        level, line = _stats_line(stats, job.params)
        events.emit("log", level=level, message=line)
        sampler.start()
        awake = keep_awake()  # on macOS: no idle sleep until this process ends

        from workers.torch import kto  # torch, transformers, trl and peft load here

        result = kto.train(job, rows, events, stop, sampler)
    except Cancelled as exc:
        print(f"cancelled: {exc}", flush=True)
        _finish(events, sampler, awake, "cancelled", {"steps": 0})
        return 0
    except Exception as exc:
        stop.interrupt = False
        traceback.print_exc()
        sys.stderr.flush()
        events.emit("error", **describe_error(exc))
        _finish(events, sampler, awake, "failed", {})
        return 1
    _finish(events, sampler, awake, result.status, result.summary)
    return 0


def _finish(events: EventWriter, sampler: MemorySampler, awake: KeepAwake, status: str,
            summary: dict) -> None:
    StopFlag.ignore_further()
    awake.stop()
    sampler.stop()  # a last memory event, and the peaks it saw
    events.emit("done", status=status, summary={**summary, **sampler.peaks()})
    events.close()


def _read_raw(path: Path) -> tuple[dict, Exception | None]:
    try:
        return read_config_file(path), None
    except Exception as exc:
        return {}, exc


def _run_dir(raw: dict, config_path: Path) -> Path:
    """The config's run_dir when it is usable, else the config file's folder."""
    value = raw.get("run_dir")
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value)
    return config_path.resolve().parent


def _stats_line(stats: dict, params: dict) -> tuple[str, str]:
    line = (
        f"{stats['rows']} rows: {stats['desirable']} desirable, {stats['undesirable']} undesirable"
    )
    low_high = stats["desirable_weight_range"]
    if low_high is None:
        return "warning", line + "; KTO learns best from both kinds, one side is empty"
    ratio = (
        params["desirable_weight"]
        * stats["desirable"]
        / (params["undesirable_weight"] * stats["undesirable"])
    )
    if not 1 <= ratio <= 4 / 3 + 1e-9:
        line += (
            f"; λD·nD/(λU·nU) = {ratio:.2f}, the KTO paper asks for 1 to 1.33: with "
            f"undesirable_weight 1 set desirable_weight in [{low_high[0]}, {low_high[1]}]"
        )
        return "warning", line
    return "info", line


if __name__ == "__main__":
    sys.exit(main())
