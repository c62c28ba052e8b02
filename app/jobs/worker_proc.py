"""The worker as a process: starting one, telling whether a PID is still it, and telling
whether its run folder was taken away under it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from app.config import Settings
from app.db import ROOT
from app.jobs.launching import launch_plan_for, one_gpu_env
from app.jobs.tuning import prepare_tune_plan
from app.models import Job
from contract.events import CONFIG_FILE, EVENTS_FILE, LOG_FILE
from contract.job_config import write_config
from contract.launch_env import worker_env
from contract.launch_plan import LAUNCH_FILE, write_launch_plan
from contract.ranks import clear_ranks


def start_worker(job: Job, settings: Settings) -> tuple[subprocess.Popen, str | None]:
    """Write the worker's config.json (and launch.json for several processes) and start it
    in its own session (so a signal reaches its children too); returns the process and the
    checkpoint it resumes from. OSError when the folder cannot be written or the interpreter
    not started; ParamError when the Hosts setting no longer has the job's hosts."""
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = job.last_checkpoint if job.last_checkpoint and \
        Path(job.last_checkpoint).is_dir() else None
    config = write_config(run_dir, job_id=job.id, backend=job.backend, method=job.method,
                          model=job.model_path, dataset=job.dataset_path, params=job.params,
                          resume_from_checkpoint=resume)
    prepare_tune_plan(job, settings.tune_min_probe_s)  # tune: auto: tune_plan.json
    # Several processes: the launcher wrapper (workers/launch.py) reads the plan and runs
    # accelerate launch or mlx.launch. One: the worker itself, and no plan left from an
    # earlier start with other scale knobs.
    plan = launch_plan_for(job, settings)
    if plan is None:
        (run_dir / LAUNCH_FILE).unlink(missing_ok=True)
        module = f"workers.{job.backend}"
    else:
        write_launch_plan(run_dir, plan)
        clear_ranks(run_dir)  # the wrapper does too, but it may die first: no stale blame
        module = "workers.launch"
    cmd = [settings.python or sys.executable, "-m", module, "--config", str(config)]
    env = worker_env(os.environ, job.backend)
    env.pop("PROSPECT_API_TOKEN", None)  # the worker needs no secret of the server
    env.update(one_gpu_env(job, env))  # one process sees one GPU (no nn.DataParallel)
    if plan is not None:  # the wrapper gives torchrun as long as the supervisor gives a cancel
        env["PROSPECT_CANCEL_GRACE_S"] = f"{settings.cancel_grace_s:g}"
    # Workers default to offline (HF_HUB_OFFLINE=1); a download job is the person's own
    # request to fetch a model, so its worker is online.
    if settings.allow_downloads or job.backend == "hub":
        env.update(HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0")
    # close_fds (the default, said aloud): the server's lock on its home must not live on
    # in a worker that outlives the server.
    with open(run_dir / LOG_FILE, "ab") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                close_fds=True)
    return proc, resume


def same_process(pid: int | None, started_at: float | None) -> bool:
    """Whether ``pid`` is still the process that started at ``started_at`` (unix time).

    PIDs are reused: a live process with the PID but another start time is someone else, and
    without a recorded start time there is no telling, so it is not taken for the worker.
    """
    if not pid or started_at is None:
        return False
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - started_at) < 1 and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):  # ValueError: a PID psutil refuses (negative)
        return False


RUN_FOLDER_HINT = ("A run's folder belongs to Prospect while the job runs: do not delete or "
                   "move it. To remove a run, delete the job (that removes its folder too); "
                   "clone the job to run it again.")


def run_folder_lost(job: Job) -> bool:
    """Whether the run folder was removed or replaced under a running worker: the config the
    supervisor wrote is gone, or the events file is shorter than what was read of it. (The
    worker writes on into the removed file, and may make the folder again to save.)"""
    run_dir = Path(job.run_dir)
    try:
        return not (run_dir / CONFIG_FILE).is_file() or \
            (run_dir / EVENTS_FILE).stat().st_size < job.events_offset
    except OSError:
        return True
