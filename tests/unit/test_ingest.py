import pytest
from sqlmodel import Session, func, select

from app.db import make_engine, migrate
from app.jobs.ingest import ingest
from app.models import Event, Job, JobStatus, Metric
from contract.events import EventWriter


@pytest.fixture
def session():
    engine = make_engine(":memory:")
    migrate(engine)
    with Session(engine) as s:
        yield s


def new_job(session, run_dir) -> Job:
    job = Job(backend="torch", method="kto", model="m", dataset="d", run_dir=str(run_dir),
              status=JobStatus.starting)
    session.add(job)
    session.commit()
    session.refresh(job)
    return job


def count(session, model, job_id):
    return session.exec(select(func.count()).select_from(model)
                        .where(model.job_id == job_id)).one()


def test_ingestion_is_idempotent_on_job_and_seq(session, tmp_path):
    job = new_job(session, tmp_path)
    w = EventWriter(tmp_path / "events.jsonl")
    w.emit("status", phase="training", message="")
    w.emit("metric", step=1, values={"loss": 0.7, "rewards/chosen": 0.1})
    assert len(ingest(session, job)) == 2
    assert job.status == JobStatus.running and job.phase == "training"
    assert ingest(session, job) == []  # nothing new: nothing added twice
    w.emit("metric", step=2, values={"loss": 0.6})
    w.emit("progress", step=2, total_steps=10, epoch=0.2, tokens_per_s=100.0, eta_s=8.0)
    assert [e.seq for e in ingest(session, job)] == [3, 4]
    assert (job.step, job.total_steps, job.eta_s) == (2, 10, 8.0)
    # A restart that lost the offset re-reads the whole file: still nothing twice.
    job.events_offset = 0
    assert ingest(session, job) == []
    assert count(session, Event, job.id) == 4
    assert count(session, Metric, job.id) == 3


def test_done_and_artifacts_fold_into_the_job(session, tmp_path):
    job = new_job(session, tmp_path)
    w = EventWriter(tmp_path / "events.jsonl")
    w.emit("checkpoint", step=5, path="/runs/1/checkpoints/checkpoint-5")
    w.emit("artifact", kind="adapter", path="/runs/1/adapter")
    w.emit("done", status="succeeded", summary={"steps": 5})
    ingest(session, job)
    assert job.status == JobStatus.succeeded and job.finished_at is not None
    assert job.adapter_path == "/runs/1/adapter" and job.last_checkpoint.endswith("-5")
    assert job.summary == {"steps": 5}


def test_bad_lines_are_skipped_not_fatal(session, tmp_path):
    job = new_job(session, tmp_path)
    w = EventWriter(tmp_path / "events.jsonl")
    w.emit("log", level="info", message="hello")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write("this is not an event\n")
    w.emit("error", error_type="OutOfMemoryError", message="CUDA OOM", hint="lower the batch")
    new = ingest(session, job)
    assert [e.type for e in new] == ["log", "error"]
    assert job.error_type == "OutOfMemoryError" and job.hint == "lower the batch"


ISSUE_LINE = '{"seq": 999999, "t": 1, "type": "metric", "step": null, "values": {"loss": 1}}'


def test_ill_typed_lines_are_skipped_and_the_offset_advances(session, tmp_path):
    """Issue 10: valid JSON with a null step made every ingest raise (int(None)), so the
    offset never moved and the job never ended."""
    job = new_job(session, tmp_path)
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("metric", step=1, values={"loss": 0.9})
    with open(path, "a") as f:
        f.write(ISSUE_LINE + "\n")
        f.write('{"seq": 3, "t": 1764000000, "type": "progress", "step": null, '
                '"total_steps": 3}\n')
        f.write('{"seq": 4, "t": 1764000000, "type": "checkpoint", "step": 1, '
                '"path": "/x\\u0000"}\n')
    w._seq = 4
    w.emit("done", status="succeeded", summary={"steps": 1})
    new = ingest(session, job)
    assert [e.type for e in new] == ["metric", "done"]
    assert job.events_offset == path.stat().st_size
    assert job.status == JobStatus.succeeded and job.last_seq == 5 and job.step == 1
    assert job.last_checkpoint is None


def test_events_the_database_refuses_are_stored_one_by_one(session, tmp_path):
    """Should the database still refuse one event, the others are kept and the offset moves
    on (here SQLite itself refuses seq 2, through a trigger)."""
    session.connection().exec_driver_sql(
        "CREATE TRIGGER refuse BEFORE INSERT ON event WHEN NEW.seq = 2 "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    session.commit()
    job = new_job(session, tmp_path)
    w = EventWriter(tmp_path / "events.jsonl")
    for step in (1, 2, 3):
        w.emit("metric", step=step, values={"loss": 1.0 / step})
    new = ingest(session, job)
    assert [e.seq for e in new] == [1, 3]
    assert job.events_offset == (tmp_path / "events.jsonl").stat().st_size
    assert count(session, Event, job.id) == 2 and job.step == 3
    assert ingest(session, job) == []  # and nothing is retried forever


def test_a_second_done_does_not_change_a_final_job(session, tmp_path):
    job = new_job(session, tmp_path)
    w = EventWriter(tmp_path / "events.jsonl")
    w.emit("done", status="succeeded", summary={})
    w.emit("done", status="failed", summary={})
    ingest(session, job)
    assert job.status == JobStatus.succeeded
