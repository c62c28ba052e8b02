"""Entry point: ``python -m workers.mlx --config <run_dir>/config.json``.

Method ``sft`` is LoRA SFT with mlx-lm's tuner; method ``kto`` is KTO in MLX. As the torch
worker: the server starts this in its own process session, cwd = repo root, output to
``<run_dir>/worker.log``; events go to ``<run_dir>/events.jsonl``. Exit code: 0 succeeded or
cancelled, 1 failed, 2 bad command line.

SIGTERM (or SIGINT) = cancel. Before training it stops at once; during training the handler
only sets a flag, and the loop saves a checkpoint (adapter, optimizer state, step) at the end
of the current step, then the adapter, and the run ends ``cancelled``.
"""

from __future__ import annotations

import os
import sys
import traceback

from contract.events import EVENTS_FILE, EventWriter
from contract.knobs import ParamError
from contract.rows import kto_stats, load_kto_dataset
from contract.sft_rows import load_sft_splits
from workers.checkpoints import MLX_FILES, resume_from_intact
from workers.keep_awake import KeepAwake, keep_awake
from workers.memory import MemorySampler
from workers.mlx.config import parse_config
from workers.mlx.errors import Cancelled, describe_error
from workers.torch.__main__ import StopFlag, _read_raw, _run_dir, _stats_line, parse_cli

# Read by huggingface_hub / transformers at import time, so set before mlx-lm loads them.
ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # never download: a cached hub id works, an uncached one fails fast
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def main(argv: list[str] | None = None) -> int:
    stop = StopFlag().install()  # first: a cancel that comes early is still seen
    cli = parse_cli("python -m workers.mlx", __doc__, argv, ENVIRONMENT)

    raw, error = _read_raw(cli.config)
    run_dir = _run_dir(raw, cli.config)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Under `mlx.launch` (data-parallel over processes or Macs) only rank 0 reports and saves.
    rank = int(os.environ.get("MLX_RANK", "0"))
    events = EventWriter(run_dir / EVENTS_FILE) if rank == 0 else SilentEvents()
    sampler = MemorySampler(events.emit, interval=cli.memory_interval)
    method = raw.get("method", "sft")
    awake = KeepAwake()
    try:
        stop.arm()
        if error is not None:
            raise error
        raw = resume_from_intact(raw, MLX_FILES, events.emit)  # a damaged one: the one before
        job = parse_config(raw)
        awake = keep_awake()  # on macOS: no idle sleep until this process ends
        print(f"job {job.job_id}: mlx {job.method} of {job.model} on {job.dataset}", flush=True)
        if job.method != "fuse":
            events.emit("status", phase="preparing_data", message=f"reading {job.dataset.name}")
        if job.method == "fuse":  # no data: the adapter is fused into the model
            sampler.start()
            from workers.mlx import fuse  # mlx and mlx-lm load here

            result = fuse.run(job, events)
        elif job.method == "sft":
            train_rows, valid_rows, info = load_sft_splits(job.dataset, job.params["seed"])
            events.emit("log", level="info", message=_sft_line(info))
            if info["format"] == "text" and job.params["mask_prompt"]:
                raise ParamError("mask_prompt", "text rows have no prompt to mask: turn "
                                 "mask_prompt off, or use prompt/completion or messages rows")
            sampler.start()
            from workers.mlx import sft  # mlx and mlx-lm load here

            result = sft.train(job, train_rows, valid_rows, events, stop, sampler)
        else:
            rows = load_kto_dataset(job.dataset)
            level, line = _stats_line(kto_stats(rows), job.params)
            events.emit("log", level=level, message=line)
            sampler.start()
            from workers.mlx import kto  # mlx and mlx-lm load here

            result = kto.train(job, rows, events, stop, sampler)
    except Cancelled as exc:
        print(f"cancelled: {exc}", flush=True)
        _finish(events, sampler, "cancelled", {"steps": 0})
        return 0
    except Exception as exc:
        stop.interrupt = False
        traceback.print_exc()
        sys.stderr.flush()
        events.emit("error", **describe_error(exc, method))
        _finish(events, sampler, "failed", {})
        return 1
    finally:
        awake.stop()
    _finish(events, sampler, result.status, result.summary)
    return 0


class SilentEvents:
    """The events of a rank other than 0: its log has the free text."""

    def emit(self, type: str, **fields) -> int:
        return 0

    def close(self) -> None:
        pass


def _finish(events: EventWriter, sampler: MemorySampler, status: str, summary: dict) -> None:
    StopFlag.ignore_further()
    sampler.stop()  # a last memory event, and the peaks it saw
    events.emit("done", status=status, summary={**summary, **sampler.peaks()})
    events.close()


def _sft_line(info: dict) -> str:
    if info["format"] == "kto":
        return (f"KTO dataset for SFT: {info['kept']} desirable rows of {info['rows']} kept "
                f"({info['dropped_undesirable']} undesirable dropped); {info['split']}")
    return f"{info['rows']} {info['format']} rows; {info['split']}"


if __name__ == "__main__":
    sys.exit(main())
