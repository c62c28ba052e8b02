import pytest
from sqlmodel import Session, func, select

from app.db import make_engine, migrate
from app.ingest import ingest
from app.models import Event, Job, JobStatus, Metric
from workers.protocol import EventWriter


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
