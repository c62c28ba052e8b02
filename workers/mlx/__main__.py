"""Entry point: ``python -m workers.mlx --config <run_dir>/config.json``.

Method ``sft`` is LoRA SFT with mlx-lm's tuner; method ``kto`` is KTO in MLX; method ``fuse``
fuses an adapter into its base model; method ``convert`` converts (and quantizes) a model for
MLX (workers/mlx/convert.py). The frame (command line, stop flag, events, errors,
exit code) is workers/runtime.py's; this is what the MLX worker does inside it. During training
SIGTERM only sets the flag, and the loop saves a checkpoint (adapter, optimizer state, step) at
the end of the current step, then the adapter, and the run ends ``cancelled``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from contract.job_config import JobConfig
from contract.knobs import ParamError
from contract.sft_rows import load_sft_splits
from workers import runtime
from workers.checkpoints import MLX_FILES
from workers.mlx.errors import describe_error
from workers.world import mlx_world


def run_job(job: JobConfig, session: runtime.Session) -> runtime.RunResult:
    events, sampler = session.events, session.sampler
    if session.world.distributed:
        # A rank that stopped at once would leave the others waiting for it in their next
        # collective, mx.distributed.init forever: a cancel only sets the flag, and the ranks
        # stop together where they all ask (workers/mlx/common.py agreed_stop): after
        # starting, after loading, at each step's end.
        session.stop.interrupt = False
    session.keep_awake()
    print(f"job {job.job_id}: mlx {job.method} of {job.model} on {job.dataset}", flush=True)
    if job.method == "generate":  # an arena's answers: two variants, the same prompts
        sampler.start()
        from workers.mlx import generate  # mlx and mlx-lm load here

        return generate.run(job, session)
    if job.method == "fuse":  # no data: the adapter is fused into the model
        sampler.start()
        from workers.mlx import fuse  # mlx and mlx-lm load here

        return fuse.run(job, events)
    if job.method == "convert":  # no data: the model alone, converted (and quantized)
        sampler.start()
        from workers.mlx import convert

        return convert.run(job, session)
    events.emit("status", phase="preparing_data", message=f"reading {job.dataset.name}")
    if job.method == "sft":
        train_rows, valid_rows, info = load_sft_splits(job.dataset, job.args.seed)
        events.emit("log", level="info", message=sft_line(info))
        if info["format"] == "text" and job.args.mask_prompt:
            raise ParamError("mask_prompt", "text rows have no prompt to mask: turn "
                             "mask_prompt off, or use prompt/completion or messages rows")
        sampler.start()
        from workers.mlx import sft  # mlx and mlx-lm load here

        return sft.train(job, train_rows, valid_rows, events, session.stop, sampler)
    rows = runtime.read_kto_rows(job, events)
    sampler.start()
    from workers.mlx import kto  # mlx and mlx-lm load here

    return kto.train(job, rows, events, session.stop, sampler)


def sft_line(info: dict) -> str:
    if info["format"] == "kto":
        return (f"KTO dataset for SFT: {info['kept']} desirable rows of {info['rows']} kept "
                f"({info['dropped_undesirable']} undesirable dropped); {info['split']}")
    return f"{info['rows']} {info['format']} rows; {info['split']}"


def is_checkpoint(path: Path) -> bool:
    """A resumable MLX checkpoint holds state.json (step and optimizer state)."""
    return (path / "state.json").is_file()


# Under `mlx.launch` only rank 0 reports and saves: rank= reads which one this is.
MLX = runtime.Backend(name="mlx", doc=__doc__, environment=runtime.OFFLINE_ENVIRONMENT,
                      checkpoint_files=MLX_FILES, is_checkpoint=is_checkpoint, body=run_job,
                      describe=describe_error, rank=mlx_world)


def hang_up_as_cancel() -> None:
    """A rank on another Mac runs under ``ssh -tt``: when that session closes (the launcher
    stopped, the network dropped) the rank gets SIGHUP, whose default would kill it before
    the other ranks agree to stop. It becomes a cancel instead, and the rank's output, whose
    terminal is gone, goes to /dev/null: a print to the closed terminal would raise (EIO)
    in the middle of the step."""

    def on_hangup(signum, frame):
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.kill(os.getpid(), signal.SIGTERM)  # the stop flag's own handler takes it

    signal.signal(signal.SIGHUP, on_hangup)


def main(argv: list[str] | None = None) -> int:
    # Under `mlx.launch` (data-parallel over processes or Macs) only rank 0 reports and saves.
    rank = int(os.environ.get("MLX_RANK", "0"))
    if rank != 0:
        hang_up_as_cancel()
    return runtime.run_worker(MLX, argv)


if __name__ == "__main__":
    sys.exit(main())
