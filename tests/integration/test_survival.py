"""Runs survive the server: SIGKILL it mid-training, start it again, lose and repeat nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from sqlmodel import Session, select

from app.jobs.supervisor import Supervisor, same_process
from app.models import Job, JobStatus
from contract.events import EVENTS_FILE, Event, read_events
from tests.helpers.browser import LOSS_POINTS, wait_js
from tests.helpers.server import LiveServer, kill_workers, make_server, sse_events, submit
from tests.helpers.workers import fake_world, run_until, wait_for_event
from workers.keep_awake import keep_awake

SURVIVE = {"max_steps": 40, "logging_steps": 1, "gradient_accumulation_steps": 1,
           "per_device_train_batch_size": 2, "max_length": 128, "save_steps": 1000,
           "device": "cpu"}


def file_metrics(run_dir: Path) -> list[tuple[int, str, float]]:
    events, _ = read_events(Path(run_dir) / EVENTS_FILE)
    assert all(isinstance(e, Event) for e in events)
    return sorted((int(e.data["step"]), k, float(v)) for e in events if e.type == "metric"
                  for k, v in e.data["values"].items())


def db_metrics(home: Path, job_id: int) -> list[tuple[int, str, float]]:
    with sqlite3.connect(home / "prospect.db") as db:
        rows = db.execute("SELECT step, name, value FROM metric WHERE job_id = ?", (job_id,))
        return sorted((s, n, v) for s, n, v in rows)


@contextlib.contextmanager
def live_page(browser, url: str):
    """The job's page in headless Chromium (None where Playwright or Chromium is missing)."""
    if browser is None:
        yield None
        return
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    try:
        yield page
    finally:
        context.close()


@pytest.mark.slow
def test_server_sigkill_mid_training_loses_and_repeats_nothing(demo_home, tmp_path,
                                                              browser_or_none):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    first = make_server(home)
    first.start()
    second = None
    try:
        job = submit(first, "survivor", **SURVIVE)
        with live_page(browser_or_none, f"{first.url}/jobs/{job['id']}") as page:
            seen = first.wait_step(job["id"], 3, timeout=120)
            if page:
                wait_js(page, f"({LOSS_POINTS})() >= 3", timeout=60_000)
            before_kill = seen["last_seq"]
            pid = seen["pid"]
            first.stop(signal.SIGKILL)
            assert first.proc.returncode == -signal.SIGKILL
            step_at_kill = seen["step"]
            # The worker goes on alone: it writes events the dead server never read.
            wait_for_event(Path(seen["run_dir"]), lambda e: e.seq > before_kill + 2, timeout=60)
            assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE

            second = LiveServer(home=home, port=first.port)  # same address: the page reconnects
            second.start()
            job = second.wait_job(job["id"], timeout=240)
            assert job["status"] == "succeeded", (job["error"], job["log_tail"])
            assert job["step"] == job["total_steps"] == 40 and step_at_kill < 40

            # The database holds exactly the metric events of the file: no gap, no duplicate.
            in_file = file_metrics(job["run_dir"])
            losses = [v for _, n, v in in_file if n == "loss"]
            assert [s for s, n, _ in in_file if n == "loss"] == list(range(1, 41))
            assert db_metrics(home, job["id"]) == in_file
            m = second.get(f"/api/jobs/{job['id']}/metrics?names=loss")
            assert m["step"] == list(range(1, 41)) and m["loss"] == losses
            if page:  # the open page's chart went on after the restart, without a gap
                wait_js(page, "window.prospectJob.store.x.length >= 40", timeout=60_000)
                assert page.evaluate("window.prospectJob.store.x") == list(range(1, 41))
                assert page.evaluate("window.prospectJob.store.cols.loss") == losses

        # A live page that saw seq `before_kill` reconnects and gets exactly what came after.
        stream = sse_events(second, job["id"], before_kill)
        all_events, _ = read_events(Path(job["run_dir"]) / EVENTS_FILE)
        assert [s for s, _, _ in stream] == [e.seq for e in all_events if e.seq > before_kill]
        assert stream[-1][1] == "done"
    finally:
        for server in (second, first):
            if server and server.proc and server.proc.poll() is None:
                kill_workers(server)
                server.stop()


def test_a_reused_pid_is_not_taken_for_the_worker():
    """Same PID, other start time: a different process (the PID was reused)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = psutil.Process(other.pid).create_time()
        assert same_process(other.pid, started)
        assert not same_process(other.pid, started - 120)  # our worker started long before
        assert not same_process(other.pid, None)  # no start time known: cannot be sure
        os.kill(other.pid, signal.SIGKILL)
        other.wait()
        assert not same_process(other.pid, started)  # gone
    finally:
        other.kill()
        other.wait()


# --- workers that die or hang, driven by the fake worker (fast) ------------------------------
@pytest.fixture
def world(tmp_path):
    return fake_world(tmp_path)


def add_fake_job(engine, settings, scenario: str) -> int:
    with Session(engine) as s:
        job = Job(backend="torch", method="kto", model="m", dataset="d",
                  params={"scenario": scenario})
        s.add(job)
        s.commit()
        job.run_dir = str(settings.runs_dir / f"{job.id:06d}")
        s.add(job)
        s.commit()
        return job.id


@pytest.mark.parametrize("scenario", ["hang", "stall"])
def test_a_hung_worker_is_stopped_and_ends_interrupted(world, scenario):
    settings, engine, sup = world
    settings.hang_timeout_s = 1.5 if scenario == "hang" else 60
    settings.stall_timeout_s = 1.5 if scenario == "stall" else 60
    job = run_until(engine, sup, add_fake_job(engine, settings, scenario),
                    {JobStatus.interrupted}, timeout=20)
    expected = "wrote no event" if scenario == "hang" else "finished no training step"
    assert job.error_type == "Hung" and expected in job.error and job.step == 2
    assert "PROSPECT_HANG_TIMEOUT_S" in job.hint and "checkpoint" in job.hint
    assert job.exit_code == -signal.SIGKILL  # it ignored SIGTERM, so the grace ran out
    assert "stuck in a collective" in job.log_tail


def test_a_crash_or_oom_is_explained_and_the_queue_goes_on(world):
    settings, engine, sup = world
    crash = add_fake_job(engine, settings, "crash")
    oom = add_fake_job(engine, settings, "oom")
    after = add_fake_job(engine, settings, "succeed")
    job = run_until(engine, sup, crash, {JobStatus.failed})
    assert job.error_type == "WorkerExited" and "code 3" in job.error
    assert "RuntimeError: boom" in job.log_tail
    job = run_until(engine, sup, oom, {JobStatus.failed})
    assert job.error_type == "out_of_memory" and "CUDA out of memory" in job.error
    assert "per_device_train_batch_size" in job.hint and "max_length" in job.hint
    assert "OutOfMemoryError" in job.log_tail  # a failed done still gets the log tail
    assert run_until(engine, sup, after, {JobStatus.succeeded}).step == 3


def test_an_adopted_worker_that_dies_without_done_is_interrupted(world):
    """After a restart the worker is not our child: its exit code is unknown."""
    settings, engine, first = world
    job_id = add_fake_job(engine, settings, "slow")
    first.tick()
    with Session(engine) as s:
        run_dir = Path(s.get(Job, job_id).run_dir)
    wait_for_event(run_dir, lambda e: e.type == "progress", timeout=20)  # it has trained a step
    second = Supervisor(engine, settings)  # the restarted server
    second.recover()
    assert second.adopted == {job_id}
    with Session(engine) as s:
        os.killpg(s.get(Job, job_id).pid, signal.SIGKILL)
    job = run_until(engine, second, job_id, {JobStatus.interrupted}, timeout=10)
    assert job.exit_code is None and job.error_type == "Interrupted"
    assert job.step >= 1 and job.log_tail


def test_a_sleep_of_the_machine_is_not_taken_for_a_hang(world, tmp_path):
    settings, _, sup = world
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / EVENTS_FILE).touch()
    hour_ago = time.time() - 3600
    os.utime(run_dir / EVENTS_FILE, (hour_ago, hour_ago))
    job = Job(backend="torch", method="kto", model="m", dataset="d", run_dir=str(run_dir),
              started_at=datetime.fromtimestamp(hour_ago - 60, UTC))
    sup._awake_since = 0  # awake all along: an hour of silence is a hang
    assert sup._last_activity(job) == pytest.approx(hour_ago)
    sup._last_tick = hour_ago  # the last pass was an hour ago: the machine slept since
    sup.note_clock(time.time())
    assert time.time() - sup._last_activity(job) < 5


def test_keep_awake_runs_caffeinate_on_macos_only():
    class Proc:
        terminated = False

        def terminate(self):
            self.terminated = True

        def wait(self, timeout=None):
            return 0

    started: list[tuple[list[str], Proc]] = []

    def runner(cmd, **kwargs):
        started.append((cmd, Proc()))
        return started[-1][1]

    awake = keep_awake(pid=4321, platform="darwin", runner=runner)
    assert awake.active and [c for c, _ in started] == [["caffeinate", "-i", "-w", "4321"]]
    awake.stop()
    assert started[0][1].terminated and not awake.active
    awake.stop()  # twice is harmless
    assert not keep_awake(platform="linux", runner=runner).active and len(started) == 1

    def missing(cmd, **kwargs):
        raise FileNotFoundError("caffeinate")

    assert not keep_awake(platform="darwin", runner=missing).active  # train anyway


def test_a_job_without_its_folder_yet_is_not_started(world):
    """create_job commits the job, then its run_dir: a pass in between must wait, not start
    a worker with run_dir "" (which wrote config.json into the server's cwd)."""
    settings, engine, sup = world
    with Session(engine) as s:
        s.add(Job(backend="torch", method="kto", model="m", dataset="d"))
        s.commit()
    sup.tick()
    with Session(engine) as s:
        (job,) = s.exec(select(Job)).all()
        assert job.status == JobStatus.queued and job.pid is None


# --- one job's bad file stops nothing else -------------------------------------------------
ISSUE_LINE = '{"seq": 999999, "t": 1, "type": "metric", "step": null, "values": {"loss": 1}}'


def broken_jobs(engine, settings) -> tuple[int, int]:
    """Two jobs whose workers are gone: one whose events file ends with an ill-typed line
    (issue 10), one whose events file cannot be read at all (a folder in its place)."""
    ids = []
    for n, scenario in enumerate(("ill-typed", "unreadable")):
        run_dir = settings.runs_dir / f"broken-{n}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text("{}")
        if scenario == "ill-typed":
            (run_dir / EVENTS_FILE).write_text(ISSUE_LINE + "\n")
        else:
            (run_dir / EVENTS_FILE).mkdir()
        with Session(engine) as s:
            job = Job(backend="torch", method="kto", model="m", dataset="d",
                      run_dir=str(run_dir), status=JobStatus.running)
            s.add(job)
            s.commit()
            ids.append(job.id)
    return ids[0], ids[1]


def test_one_jobs_bad_events_file_stops_neither_the_queue_nor_the_job(world):
    settings, engine, sup = world
    ill_typed, unreadable = broken_jobs(engine, settings)
    after = add_fake_job(engine, settings, "succeed")
    assert run_until(engine, sup, after, {JobStatus.succeeded}).step == 3  # the queue goes on
    with Session(engine) as s:
        job = s.get(Job, ill_typed)  # its worker is gone: it ends, it is not left running
        assert job.status == JobStatus.failed and job.events_offset == len(ISSUE_LINE) + 1
        job = s.get(Job, unreadable)  # unreadable, yet its worker is watched: it ends too
        assert job.status == JobStatus.failed and job.pid is None


def test_recover_at_the_start_survives_bad_events_files(world):
    settings, engine, _ = world
    ill_typed, unreadable = broken_jobs(engine, settings)
    Supervisor(engine, settings).recover()  # the server's start: must not raise
    with Session(engine) as s:
        assert s.get(Job, ill_typed).status == JobStatus.interrupted
        assert s.get(Job, unreadable).status == JobStatus.interrupted


@pytest.mark.slow
def test_a_page_whose_stream_misses_the_end_of_a_run_reads_it_from_the_database(
        demo_home, tmp_path, browser_or_none):
    """The server dies mid-run and the job ends while it is down; when the server is back the
    page's card reads the database (final) and ends the stream, maybe before the stream has
    reconnected (htmx-sse backs off up to a minute). The page then reads the missed steps
    from the database. Here the stream is kept from reconnecting at all, so only that read
    can draw the last steps."""
    if browser_or_none is None:
        pytest.skip("needs Chromium")
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    first = make_server(home)
    first.start()
    second = None
    try:
        job = submit(first, "unseen end", **SURVIVE)
        with live_page(browser_or_none, f"{first.url}/jobs/{job['id']}") as page:
            seen = first.wait_step(job["id"], 3, timeout=120)
            wait_js(page, f"({LOSS_POINTS})() >= 3", timeout=60_000)
            page.route("**/api/jobs/*/events*", lambda route: route.abort())
            first.stop(signal.SIGKILL)
            wait_for_event(Path(seen["run_dir"]), lambda e: e.type == "done", timeout=240)
            assert page.evaluate("window.prospectJob.store.x.length") < 40
            second = LiveServer(home=home, port=first.port)
            second.start()
            job = second.wait_job(job["id"], timeout=120)
            assert job["status"] == "succeeded", (job["error"], job["log_tail"])
            wait_js(page, "window.prospectJob.store.x.length >= 40", timeout=60_000)
            steps = page.evaluate("window.prospectJob.store.x")
            assert steps == list(range(1, 41))
    finally:
        kill_workers(second or first)
        (second or first).stop()
