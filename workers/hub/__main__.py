"""Entry point: ``python -m workers.hub --config <run_dir>/config.json``.

Method ``download``: a hub model's files (config, tokenizer, weights) into the normal Hugging
Face cache with ``huggingface_hub.snapshot_download`` (workers/hub/download.py), with progress
events in bytes and files. SIGTERM stops it at once, ``done cancelled``; the files it finished
stay in the cache, so a resume (or a new download of the same id) fetches only the rest.
The frame (command line, stop flag, events, errors, exit code) is workers/runtime.py's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from contract.job_config import JobConfig
from workers import runtime
from workers.hub.errors import describe_error

ENVIRONMENT = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the progress is in events.jsonl, not the log
}


def run_job(job: JobConfig, session: runtime.Session) -> runtime.RunResult:
    print(f"job {job.job_id}: hub download of {job.model} at {job.args.revision}", flush=True)
    session.sampler.start()  # the worker's own memory, every 2 s, as the other workers do
    from workers.hub import download  # huggingface_hub loads here

    return download.run(job, session)


def no_checkpoint(path: Path) -> bool:
    return False  # a download resumes from the files in the cache, not a checkpoint


HUB = runtime.Backend(name="hub", doc=__doc__, environment=ENVIRONMENT, checkpoint_files=(),
                      is_checkpoint=no_checkpoint, body=run_job, describe=describe_error)


def main(argv: list[str] | None = None) -> int:
    return runtime.run_worker(HUB, argv)


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The done event is written and synced. A cancelled download leaves the hub client's
    # pool threads blocked on the network; the interpreter would join them at exit (a stalled
    # server would hold the worker for minutes), so leave without waiting for them.
    os._exit(rc)
