"""The Alembic head matches the SQLModel tables: a model change without a migration fails."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import app.models  # noqa: F401 - registers the tables
from app.db import make_engine, migrate


def test_migrations_match_models(tmp_path):
    engine = make_engine(tmp_path / "m.db")
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def upgrade_to(engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from app.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_job_ids_are_never_reused(tmp_path):
    """Deleting the newest job gave its id (and its run folder name) to the next job."""
    from sqlmodel import Session

    from app.config import Settings
    from app.jobs.lifecycle import delete_job
    from app.models import Job

    settings = Settings(home=tmp_path)
    engine = make_engine(tmp_path / "m.db")
    migrate(engine)
    with Session(engine) as s:
        for _ in range(2):
            s.add(Job(backend="torch", method="kto", model="m", dataset="d"))
        s.commit()
        delete_job(s, s.get(Job, 2), settings)
        job = Job(backend="torch", method="kto", model="m", dataset="d")
        s.add(job)
        s.commit()
        assert job.id == 3


def test_the_autoincrement_migration_keeps_every_job_metric_and_event(tmp_path):
    engine = make_engine(tmp_path / "m.db")
    upgrade_to(engine, "0004")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO job (id, name, backend, method, model, dataset, params, status, "
            "created_at, step, run_dir, model_path, dataset_path, events_offset, last_seq, "
            "notes, tags) VALUES (7, 'a', 'torch', 'kto', 'm', 'd', '{}', 'SUCCEEDED', "
            "'2026-11-30 12:00:00', 2, '', '', '', 0, 2, '', '[]')")
        conn.exec_driver_sql("INSERT INTO event (job_id, seq, t, type, data) VALUES "
                             "(7, 1, 1.0, 'log', '{}'), (7, 2, 2.0, 'done', '{}')")
        conn.exec_driver_sql("INSERT INTO metric (job_id, seq, step, name, value) VALUES "
                             "(7, 1, 1, 'loss', 0.5)")
    migrate(engine)
    with engine.begin() as conn:
        count = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
                 for t in ("job", "event", "metric")}
        assert count == {"job": 1, "event": 2, "metric": 1}
        assert "AUTOINCREMENT" in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'job'").scalar()
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # on again
        conn.exec_driver_sql("DELETE FROM job WHERE id = 7")
        assert conn.exec_driver_sql("SELECT count(*) FROM event").scalar() == 0  # cascades
