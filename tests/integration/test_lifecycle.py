"""Status transitions and the supervisor, driven by a fake worker that speaks the protocol."""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from sqlmodel import Session

from app.errors import JobInputError, JobStateError
from app.jobs.lifecycle import delete_job, request_cancel, request_resume, set_status, transition
from app.jobs.metrics import columnar
from app.jobs.supervisor import Supervisor
from app.jobs.worker_proc import start_worker
from app.models import Job, JobStatus
from contract.events import Event, read_events
from tests.helpers.workers import fake_world, run_until


def test_allowed_and_refused_transitions():
    job = Job(backend="torch", method="kto", model="m", dataset="d")
    transition(job, JobStatus.starting)
    transition(job, JobStatus.running)
    transition(job, JobStatus.succeeded)
    with pytest.raises(JobStateError):
        transition(job, JobStatus.running)
    with pytest.raises(JobStateError):
        transition(Job(backend="t", method="k", model="m", dataset="d"), JobStatus.succeeded)


@pytest.fixture
def world(tmp_path, monkeypatch):
    return fake_world(tmp_path)


def add_job(engine, settings) -> int:
    with Session(engine) as s:
        job = Job(backend="torch", method="kto", model="m", dataset="d")
        s.add(job)
        s.commit()
        job.run_dir = str(settings.runs_dir / f"{job.id:06d}")
        s.add(job)
        s.commit()
        return job.id


def test_fifo_one_at_a_time_and_success(world, monkeypatch):
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "succeed")
    a, b = add_job(engine, settings), add_job(engine, settings)
    sup.tick()
    with Session(engine) as s:
        assert s.get(Job, a).status == JobStatus.starting
        assert s.get(Job, b).status == JobStatus.queued  # one job at a time
    job = run_until(engine, sup, a, {JobStatus.succeeded})
    assert job.exit_code == 0 and job.step == 3
    with Session(engine) as s:
        assert columnar(s, a, ["loss"])["step"] == [1, 2, 3]
    run_until(engine, sup, b, {JobStatus.succeeded})


def test_a_worker_that_exits_without_done_fails_with_code_and_log_tail(world, monkeypatch):
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "crash")
    job = run_until(engine, sup, add_job(engine, settings), {JobStatus.failed})
    assert job.exit_code == 3
    assert "exited with code 3" in job.error
    assert "RuntimeError: boom" in job.log_tail
    with Session(engine) as s:  # what it logged before dying is kept
        assert columnar(s, job.id, ["loss"])["step"] == [1, 2]


def start_then_cancel(world, monkeypatch, scenario: str, timeout: float = 20) -> Job:
    """Start a fake worker, cancel it once it reported (its SIGTERM handler is set by then),
    supervise until its process ends."""
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", scenario)
    job_id = add_job(engine, settings)
    deadline = time.monotonic() + timeout
    while True:
        sup.tick()
        with Session(engine) as s:
            if s.get(Job, job_id).status == JobStatus.running:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with Session(engine) as s:
        job = request_cancel(s, s.get(Job, job_id))
        sup.cancel_now(job)
    return run_until(engine, sup, job_id, {JobStatus.cancelled}, timeout=timeout)


def test_cancel_saves_a_checkpoint_and_resume_requeues(world, monkeypatch):
    _, engine, _ = world
    job = start_then_cancel(world, monkeypatch, "slow")
    job_id = job.id
    assert job.last_checkpoint and Path(job.last_checkpoint).is_dir()
    with Session(engine) as s:
        assert request_resume(s, s.get(Job, job_id)).status == JobStatus.queued


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(world, monkeypatch):
    job = start_then_cancel(world, monkeypatch, "ignore_term", timeout=15)
    assert job.exit_code == -9 and "killed" in job.error


def test_cancelling_a_queued_job_needs_no_worker(world):
    settings, engine, _ = world
    with Session(engine) as s:
        job = request_cancel(s, s.get(Job, add_job(engine, settings)))
        assert job.status == JobStatus.cancelled
        with pytest.raises(JobStateError):
            request_cancel(s, job)


def test_workers_stay_offline_unless_downloads_are_allowed(world, monkeypatch):
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "succeed")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    job = run_until(engine, sup, add_job(engine, settings), {JobStatus.succeeded})
    assert "HF_HUB_OFFLINE=None" in (Path(job.run_dir) / "worker.log").read_text()
    settings.allow_downloads = True
    job = run_until(engine, sup, add_job(engine, settings), {JobStatus.succeeded})
    assert "HF_HUB_OFFLINE=0" in (Path(job.run_dir) / "worker.log").read_text()


# --- races: every transition is a compare-and-set, so exactly one writer wins ----------------
def read_as_queued(engine, job_id):
    """A session holding the job as one writer read it (queued), before another acts."""
    s = Session(engine)
    job = s.get(Job, job_id)
    assert job.status == JobStatus.queued
    return s, job


def done_events(job) -> list[str]:
    events, _ = read_events(Path(job.run_dir) / "events.jsonl")
    return [e.data["status"] for e in events if isinstance(e, Event) and e.type == "done"]


def test_a_cancel_that_wins_before_the_launch_starts_no_worker(world, monkeypatch):
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "succeed")
    job_id = add_job(engine, settings)
    s, stale = read_as_queued(engine, job_id)  # the supervisor's pass read it queued...
    with Session(engine) as api:  # ... then the person's cancel committed
        assert request_cancel(api, api.get(Job, job_id)).status == JobStatus.cancelled
    with s:
        assert sup._launch(s, stale) is False
    assert sup.procs == {}
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.cancelled and job.pid is None
        assert job.started_at is None and job.finished_at is not None
    assert not (Path(job.run_dir) / "events.jsonl").exists()  # no worker ever ran


def test_a_launch_that_wins_gets_the_cancel_signalled(world, monkeypatch):
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "succeed")
    job_id = add_job(engine, settings)
    api, stale = read_as_queued(engine, job_id)  # the API read it queued...
    sup.tick()  # ... then the supervisor claimed it and started the worker
    with api:
        job = request_cancel(api, stale)
        assert job.status in (JobStatus.starting, JobStatus.running)
        assert job.cancel_requested_at is not None
        sup.cancel_now(job)
    job = run_until(engine, sup, job_id, {JobStatus.cancelled, JobStatus.succeeded})
    assert job.status == JobStatus.cancelled and "succeeded" not in done_events(job)
    assert job.finished_at >= job.started_at


def test_a_cancel_during_the_launch_is_signalled_once_the_pid_is_known(world, monkeypatch):
    """The cancel came between the claim and the worker's start: it found no PID to signal,
    so the supervisor's next pass sends SIGTERM (not only SIGKILL when the grace is over)."""
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "slow")
    job_id = add_job(engine, settings)
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert set_status(s, job, JobStatus.starting)  # the launch's claim
        job = request_cancel(s, job)
        sup.cancel_now(job)  # the API's SIGTERM: no PID yet, nothing sent
        assert job.pid is None and job.cancel_requested_at is not None
        proc, _ = start_worker(job, settings)  # the launch goes on
        sup.procs[job_id] = proc
        job.pid = proc.pid
        s.add(job)
        s.commit()
    job = run_until(engine, sup, job_id, {JobStatus.cancelled}, timeout=15)
    # SIGTERM (before its handler was set, or saved and stopped), not the grace's SIGKILL
    assert job.exit_code in (0, -signal.SIGTERM) and "succeeded" not in done_events(job)


def test_two_supervisors_never_start_one_job_twice(world, monkeypatch):
    settings, engine, first = world
    monkeypatch.setenv("FAKE_SCENARIO", "succeed")
    second = Supervisor(engine, settings)  # a second server on the same home
    job_id = add_job(engine, settings)
    s, stale = read_as_queued(engine, job_id)  # the first read it queued...
    second.tick()  # ... the second claimed and started it
    with s:
        assert first._launch(s, stale) is False
    assert first.procs == {} and list(second.procs) == [job_id]
    job = run_until(engine, second, job_id, {JobStatus.succeeded})
    assert done_events(job) == ["succeeded"]  # one worker, one done


def test_deleting_a_queued_job_as_it_launches(world, monkeypatch):
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "succeed")
    # The delete wins: the launch finds the row gone and starts nothing (no StaleDataError,
    # no worker left running for a job that no longer exists).
    job_id = add_job(engine, settings)
    s, stale = read_as_queued(engine, job_id)
    with Session(engine) as api:
        delete_job(api, api.get(Job, job_id), settings)
    with s:
        assert sup._launch(s, stale) is False
    assert sup.procs == {}
    sup.tick()  # and the next pass has nothing to trip on

    # The launch wins: the delete is refused (409), the job runs to its end.
    job_id = add_job(engine, settings)
    api, stale = read_as_queued(engine, job_id)
    sup.tick()
    with api, pytest.raises(JobStateError, match="cancel it before deleting"):
        delete_job(api, stale, settings)
    assert run_until(engine, sup, job_id, {JobStatus.succeeded}).exit_code == 0


def test_a_run_folder_removed_mid_run_ends_with_a_clear_error(world, monkeypatch):
    """The worker writes on into the removed events file and exits 0: before, the job said
    only "exited with code 0 without finishing"."""
    settings, engine, sup = world
    monkeypatch.setenv("FAKE_SCENARIO", "slow")
    job_id = add_job(engine, settings)
    deadline = time.monotonic() + 20
    while True:
        sup.tick()
        with Session(engine) as s:
            job = s.get(Job, job_id)
        if job.step >= 1:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    shutil.rmtree(job.run_dir)
    os.killpg(job.pid, signal.SIGTERM)  # it saves (making the folder again) and exits 0
    job = run_until(engine, sup, job_id, {JobStatus.failed})
    assert job.exit_code == 0 and job.error_type == "RunFolderRemoved", job.error
    assert f"{job.run_dir} was removed" in job.error and "delete the job" in job.hint


def test_resume_checks_that_the_dataset_and_model_still_exist(world, tmp_path):
    _, engine, _ = world
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with Session(engine) as s:
        job = Job(backend="torch", method="kto", model="my-model", dataset="my-data",
                  model_path=str(model), dataset_path=str(data), status=JobStatus.cancelled,
                  last_checkpoint=str(ckpt))
        s.add(job)
        s.commit()
        data.unlink()
        with pytest.raises(JobInputError) as err:
            request_resume(s, job)
        assert (err.value.field, err.value.status_code) == ("dataset", 422)
        assert "my-data" in err.value.message and str(data) in err.value.message
        data.write_text("{}\n")
        shutil.rmtree(model)
        with pytest.raises(JobInputError) as err:
            request_resume(s, job)
        assert (err.value.field, err.value.status_code) == ("model", 422)
        assert "my-model" in err.value.message
        model.mkdir()
        (model / "config.json").write_text("{}")
        assert request_resume(s, job).status == JobStatus.queued
