"""Entry point: ``python -m workers.torch --config <run_dir>/config.json``.

Method ``kto`` is TRL's KTO with a LoRA adapter; method ``fuse`` merges a PEFT adapter into its
base model. The frame (command line, stop flag, events, errors, exit code) is
workers/runtime.py's; this is what the torch worker does inside it. During training SIGTERM
only sets the flag, and the callback saves a checkpoint at the end of the current step, after
which the adapter is saved and the run ends ``cancelled``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from contract.job_config import JobConfig
from workers import runtime
from workers.checkpoints import TORCH_FILES
from workers.torch.errors import describe_error
from workers.world import torch_world

# Read by torch / huggingface_hub / datasets at import time, so set before any of them loads.
ENVIRONMENT = {
    "PYTORCH_ENABLE_MPS_FALLBACK": "1",  # ops MPS lacks run on the CPU instead of failing
    **runtime.OFFLINE_ENVIRONMENT,
}


def run_job(job: JobConfig, session: runtime.Session) -> runtime.RunResult:
    # TRL 1.16 still calls transformers 5's gradient_checkpointing_* aliases on every step.
    warnings.filterwarnings("ignore", message=".*will be removed in v6", category=FutureWarning)
    if job.method == "generate":  # an arena's answers: two variants, the same prompts
        session.sampler.start()
        from workers.torch import generate  # torch, transformers and peft load here

        return generate.run(job, session)
    if job.method == "fuse":  # no data: the adapter is merged into the model
        print(f"job {job.job_id}: torch merge of {job.args.adapter_path}", flush=True)
        session.sampler.start()
        from workers.torch import merge  # torch, transformers and peft load here

        return merge.run(job, session.events)
    print(f"job {job.job_id}: torch KTO of {job.model} on {job.dataset}", flush=True)
    session.events.emit("status", phase="preparing_data", message=f"reading {job.dataset.name}")
    rows = runtime.read_kto_rows(job, session.events)
    session.sampler.start()
    session.keep_awake()

    from workers.torch import kto  # torch, transformers, trl and peft load here

    return kto.train(job, rows, session.events, session.stop, session.sampler, session.world)


TORCH = runtime.Backend(name="torch", doc=__doc__, environment=ENVIRONMENT,
                        checkpoint_files=TORCH_FILES, is_checkpoint=Path.is_dir, body=run_job,
                        describe=describe_error, rank=torch_world)


def main(argv: list[str] | None = None) -> int:
    return runtime.run_worker(TORCH, argv)


if __name__ == "__main__":
    sys.exit(main())
