"""Resume: a stopped-and-resumed torch KTO run against an uninterrupted one on the tiny model."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session

from app.db import make_engine, migrate
from app.jobs.ingest import ingest
from app.jobs.metrics import columnar
from app.models import Job
from contract.events import EVENTS_FILE, LOG_FILE, EventWriter, read_events
from contract.knobs import TORCH_KTO
from tests.helpers.server import kill_workers, make_server, submit
from tests.helpers.workers import REPO, events_of, of_type
from tests.helpers.workers import write_torch_config as write_config
from workers.tools.demo_assets import build_all
from workers.torch.errors import describe_error

STEPS = 16
RUN = {"max_steps": STEPS, "logging_steps": 1, "gradient_accumulation_steps": 1,
       "per_device_train_batch_size": 2, "max_length": 128, "save_steps": 1000,
       "learning_rate": 2e-3, "seed": 7, "device": "cpu"}


def losses_in_file(run_dir: str) -> list[tuple[int, int, float]]:
    """(seq, step, loss) of every metric event, in the order written."""
    events, _ = read_events(Path(run_dir) / EVENTS_FILE)
    return [(e.seq, e.data["step"], e.data["values"]["loss"]) for e in events
            if e.type == "metric" and "loss" in e.data["values"]]


def stop_when_ready(server, plan: dict[int, tuple]) -> None:
    """plan: job id -> (ready(job), stop(job)); poll all, stop each as soon as it is ready."""
    t0 = time.monotonic()
    while plan:
        assert time.monotonic() - t0 < 180, plan
        for job_id, (ready, stop) in list(plan.items()):
            job = server.get(f"/api/jobs/{job_id}")
            assert job["status"] in ("queued", "starting", "running"), job  # not over yet
            if ready(job):
                stop(job)
                del plan[job_id]
        time.sleep(0.05)


@pytest.mark.slow
def test_stopped_and_resumed_runs_match_an_uninterrupted_one(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    # All at once, one CPU thread each: on a small machine that is faster than one by one.
    server = make_server(home, PROSPECT_MAX_CONCURRENT_JOBS="3", OMP_NUM_THREADS="1")
    server.start()
    try:
        whole = submit(server, "whole", **RUN)
        parted = submit(server, "cancelled", **RUN)
        killed = submit(server, "killed", **{**RUN, "save_steps": 4})

        stop_when_ready(server, {
            # Cancelled: the worker saves a checkpoint at the step it stops at.
            parted["id"]: (lambda j: j["step"] >= 3,
                           lambda j: server.post(f"/api/jobs/{j['id']}/cancel")),
            # Killed between two checkpoints (as by the OOM killer): it logged steps past its
            # last checkpoint, which the resumed run logs again.
            killed["id"]: (lambda j: j["last_checkpoint"] and j["step"] > 4,
                           lambda j: os.killpg(j["pid"], signal.SIGKILL)),
        })
        stopped = server.wait_job(parted["id"])
        assert stopped["status"] == "cancelled", (stopped["error"], stopped["log_tail"])
        ckpt = Path(stopped["last_checkpoint"])
        at = int(ckpt.name.removeprefix("checkpoint-"))
        assert 3 <= at < STEPS and stopped["step"] == at
        assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file()
        cancel_seq = stopped["last_seq"]
        died = server.wait_job(killed["id"])
        assert died["status"] == "failed" and "SIGKILL" in died["error"], died
        kill_ckpt = int(Path(died["last_checkpoint"]).name.removeprefix("checkpoint-"))
        assert kill_ckpt % 4 == 0 and died["step"] >= kill_ckpt
        kill_seq = died["last_seq"]

        for job in (parted, killed):
            status, body = server.post(f"/api/jobs/{job['id']}/resume")
            assert status == 200 and body["status"] == "queued", body
        jobs = [server.wait_job(j["id"]) for j in (whole, parted, killed)]
        assert [j["status"] for j in jobs] == ["succeeded"] * 3, [j["log_tail"] for j in jobs]
        assert [j["step"] for j in jobs] == [STEPS] * 3

        # The resumed attempts log from their checkpoint's next step on, each step once.
        for job, after_seq, ckpt_step in ((parted, cancel_seq, at), (killed, kill_seq, kill_ckpt)):
            resumed = [step for seq, step, _ in losses_in_file(job["run_dir"]) if seq > after_seq]
            assert resumed == list(range(ckpt_step + 1, STEPS + 1))
        a, b, c = (server.get(f"/api/jobs/{j['id']}/metrics?names=loss") for j in jobs)
        assert a["step"] == b["step"] == c["step"] == list(range(1, STEPS + 1))
        # Same seed on the CPU: identical up to the stop. After it HF Trainer restores the
        # optimizer, scheduler and RNG states and skips the batches already seen, so the data
        # order and the updates carry on as if never stopped (bit-identical here; the margin
        # only allows for a different CPU thread split). For the killed run the endpoint shows
        # the resumed attempt's values of the steps logged twice: the same curve again.
        assert b["loss"][:at] == a["loss"][:at]
        assert b["loss"][at:] == pytest.approx(a["loss"][at:], rel=1e-5)
        assert c["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert len(set(a["loss"])) > 3  # the curve moves: the comparison means something
    finally:
        kill_workers(server)
        server.stop()


def test_a_step_logged_twice_shows_the_later_attempt(tmp_path):
    """An interrupted run logged steps past its last checkpoint; the resumed run logs them
    again. The file keeps both (append-only); the chart's endpoint keeps the last by seq."""
    engine = make_engine(tmp_path / "db.sqlite")
    migrate(engine)
    events = EventWriter(tmp_path / EVENTS_FILE)
    for step, loss in [(1, 0.9), (2, 0.8), (3, 0.7), (2, 0.6), (3, 0.5), (4, 0.4)]:
        events.emit("metric", step=step, values={"loss": loss})
    events.close()
    with Session(engine) as s:
        job = Job(backend="torch", method="kto", model="m", dataset="d", run_dir=str(tmp_path))
        s.add(job)
        s.commit()
        ingest(s, job)
        assert columnar(s, job.id) == {"step": [1, 2, 3, 4], "loss": [0.9, 0.6, 0.5, 0.4]}
        assert columnar(s, job.id, since_step=1)["loss"] == [0.6, 0.5, 0.4]


# --- a full disk while saving a checkpoint ---------------------------------------------------
FAIL_SAVE_AT_4 = """
import errno, sys, transformers
from workers.torch.__main__ import main
save = transformers.Trainer._save_optimizer_and_scheduler
def full(self, output_dir):
    if self.state.global_step == 4:  # the adapter is written, the optimizer state is not
        raise OSError(errno.ENOSPC, "No space left on device")
    save(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = full
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_disk_full_while_saving_fails_clearly_and_keeps_the_previous_checkpoint(
        demo_home, tmp_path):
    demo = build_all(demo_home / "models", demo_home / "datasets")
    params = TORCH_KTO.validate({**RUN, "max_steps": 6, "save_steps": 2})
    config = write_config(tmp_path, demo, params=params)
    with open(tmp_path / LOG_FILE, "ab") as log:
        rc = subprocess.run([sys.executable, "-c", FAIL_SAVE_AT_4, "--config", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=180).returncode
    events = events_of(tmp_path)
    assert rc == 1, (tmp_path / LOG_FILE).read_text()[-3000:]
    (error,) = of_type(events, "error")
    assert error["error_type"] == "disk_full" and error["step"] == 4
    assert error["message"].startswith("disk full while saving the checkpoint at step 4; "
                                       "free space on the disk that holds")
    assert "checkpoint-2" in error["hint"] and "intact" in error["hint"]
    assert events[-1].data["status"] == "failed"
    assert [c["step"] for c in of_type(events, "checkpoint")] == [2]
    kept = tmp_path / "checkpoints" / "checkpoint-2"
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                 "trainer_state.json"):
        assert (kept / name).is_file(), name
    assert not (tmp_path / "checkpoints" / "checkpoint-4").exists()  # half-written: removed


def test_disk_full_elsewhere_is_named_too():
    error = describe_error(OSError(errno.ENOSPC, "No space left on device"))
    assert error["error_type"] == "disk_full" and "free space" in error["hint"]
