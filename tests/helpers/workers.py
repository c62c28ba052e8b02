"""Workers for the tests: the real torch and MLX workers run as the server runs them (a config
file in a run folder, their own session, output to worker.log), their events read back, and
the fake worker (tests/fake_worker.py) that speaks the protocol and trains nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import Session

from app.models import Job
from contract.events import CONFIG_FILE, EVENTS_FILE, LOG_FILE, Event, read_events
from contract.knobs import MLX_KTO, MLX_SFT, TORCH_KTO
from tests.helpers import ROOT

REPO = ROOT
FAKE = ROOT / "tests" / "fake_worker.py"

# The fewest steps that still save a checkpoint mid-run (torch: every 3 of 6).
FAST = {
    "max_steps": 6,
    "logging_steps": 1,
    "save_steps": 3,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-4,
    "device": "cpu",
}
SFT_FAST = {"iters": 12, "batch_size": 4, "learning_rate": 1e-3, "steps_per_report": 4,
            "steps_per_eval": 6, "steps_per_save": 6, "val_batches": 2}
KTO_FAST = {"iters": 8, "batch_size": 4, "learning_rate": 1e-3, "steps_per_report": 2,
            "steps_per_save": 4}


def events_of(run_dir: Path) -> list[Event]:
    events, _ = read_events(run_dir / EVENTS_FILE)
    bad = [e for e in events if not isinstance(e, Event)]
    assert not bad, bad
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "seq must increase strictly"
    return events


def of_type(events: list[Event], kind: str) -> list[dict]:
    return [e.data for e in events if e.type == kind]


def wait_for_event(run_dir: Path, predicate, timeout: float = 90) -> Event:
    """Poll the run's events file until an event satisfies `predicate`; return that event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events_of(run_dir):
            if predicate(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"timed out; log:\n{(run_dir / LOG_FILE).read_text()[-3000:]}")


def _config(run_dir: Path, config: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    path.write_text(json.dumps(config))
    return path


def _start(run_dir: Path, module: str) -> subprocess.Popen:
    """As the server starts a worker: own session, cwd = repo root, output to worker.log."""
    log = open(run_dir / LOG_FILE, "ab")  # noqa: SIM115 - the child holds it
    cmd = [sys.executable, "-m", module, "--config", str(run_dir / CONFIG_FILE)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    log.close()
    return proc


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file short, as an interrupted copy leaves it."""
    os.truncate(path, int(path.stat().st_size * keep))


# --- torch --------------------------------------------------------------------------------------
def write_torch_config(run_dir: Path, demo, params=None, **overrides) -> Path:
    return _config(run_dir, {
        "job_id": 1,
        "backend": "torch",
        "method": "kto",
        "model": str(demo["model"]),
        "dataset": str(demo["dataset"]),
        "run_dir": str(run_dir),
        "params": params if params is not None else TORCH_KTO.validate(FAST),
        "resume_from_checkpoint": None,
        **overrides,
    })


def start_torch(run_dir: Path) -> subprocess.Popen:
    return _start(run_dir, "workers.torch")


def run_torch(run_dir: Path, timeout: float = 120) -> tuple[int, list[Event]]:
    rc = start_torch(run_dir).wait(timeout=timeout)
    return rc, events_of(run_dir)


# --- MLX ----------------------------------------------------------------------------------------
def write_mlx_config(run_dir: Path, demo, method: str, params: dict, **overrides) -> Path:
    spec = MLX_SFT if method == "sft" else MLX_KTO
    return _config(run_dir, {
        "job_id": 1, "backend": "mlx", "method": method, "model": str(demo["model"]),
        "dataset": str(demo["dataset"]), "run_dir": str(run_dir),
        "params": spec.validate(params), "resume_from_checkpoint": None, **overrides})


def start_mlx(run_dir: Path) -> subprocess.Popen:
    return _start(run_dir, "workers.mlx")


def run_mlx(run_dir: Path, timeout: float = 120) -> tuple[int, list[Event]]:
    rc = start_mlx(run_dir).wait(timeout=timeout)
    return rc, events_of(run_dir)


# --- the supervisor without a server ------------------------------------------------------------
def run_until(engine, sup, job_id, statuses, timeout=20) -> Job:
    """Tick the supervisor until the job reaches one of `statuses` and its process is gone."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sup.tick()
        with Session(engine) as s:
            job = s.get(Job, job_id)
            if job.status in statuses and job.pid is None:
                return job
        time.sleep(0.05)
    raise TimeoutError(job.status)


def fake_world(tmp_path: Path):
    """A home whose workers are the fake one, its database, and a Supervisor over them (no
    server): (settings, engine, supervisor). A cancelled fake worker gets 1 s of grace."""
    from app.config import Settings
    from app.db import make_engine, migrate
    from app.jobs.supervisor import Supervisor
    from tests.helpers.data import seed_db

    python = tmp_path / "fake-python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    python.chmod(0o755)
    settings = Settings(home=tmp_path / "home", python=str(python), cancel_grace_s=1.0)
    settings.ensure_dirs()
    engine = make_engine(seed_db(settings.db_path))
    migrate(engine)
    return settings, engine, Supervisor(engine, settings)
