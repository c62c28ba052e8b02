"""Columnar metrics and the peak-keeping downsampling behind every chart of a long run."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import insert
from sqlmodel import Session

from app.db import make_engine, migrate
from app.jobs.metrics import columnar
from app.models import Job, Metric
from tests.helpers.data import seed_db


@pytest.fixture
def session(tmp_path):
    engine = make_engine(seed_db(tmp_path / "m.db"))
    migrate(engine)
    with Session(engine) as s:
        yield s


def add_job(session: Session, rows: list[tuple[int, int, str, float | None]]) -> int:
    job = Job(backend="torch", method="kto", model="m", dataset="d")
    session.add(job)
    session.commit()
    # executemany: one statement with 40,000 VALUES groups takes seconds to compile
    session.execute(insert(Metric), [{"job_id": job.id, "seq": seq, "step": step, "name": name,
                                      "value": value} for seq, step, name, value in rows])
    session.commit()
    return job.id


def long_run(steps: int) -> list[tuple[int, int, str, float | None]]:
    rows = []
    for step in range(1, steps + 1):
        loss = math.exp(-step / steps) + (5.0 if step == 7777 else 0.0)  # a one-step spike
        kl = 0.1 - (3.0 if step == 4242 else 0.0)  # a one-step dip
        rows += [(step, step, "loss", loss), (step, step, "kl", kl)]
        if step % 100 == 0:  # sparse: an eval every 100 steps
            rows.append((step, step, "val_loss", loss))
    return rows


def test_downsampling_keeps_ends_spikes_and_dips_within_max_points(session):
    jid = add_job(session, long_run(20_000))
    full = columnar(session, jid)
    assert len(full["step"]) == 20_000 and list(full) == ["step", "loss", "kl", "val_loss"]
    thin = columnar(session, jid, max_points=500)
    steps = thin["step"]
    assert 100 < len(steps) <= 500 and steps == sorted(steps)
    assert steps[0] == 1 and steps[-1] == 20_000
    assert 7777 in steps and max(thin["loss"]) == full["loss"][7776]
    assert 4242 in steps and min(thin["kl"]) == pytest.approx(-2.9)
    assert any(v is not None for v in thin["val_loss"])
    # aligned: each kept step carries the values the full series has there
    for i, step in enumerate(steps):
        assert thin["loss"][i] == full["loss"][step - 1]


def test_filters_and_a_step_logged_twice_keeps_the_later_write(session):
    rows = [(1, 1, "loss", 1.0), (2, 2, "loss", 0.9), (3, 3, "loss", 0.8),
            (4, 2, "loss", 0.5),  # step 2 again after a resume: the later seq wins
            (5, 3, "kl", None)]
    jid = add_job(session, rows)
    assert columnar(session, jid) == {"step": [1, 2, 3], "loss": [1.0, 0.5, 0.8],
                                      "kl": [None, None, None]}
    assert columnar(session, jid, names=["kl", "loss"], since_step=1) == {
        "step": [2, 3], "kl": [None, None], "loss": [0.5, 0.8]}
    assert columnar(session, jid, names=["nothing"]) == {"step": [], "nothing": []}
