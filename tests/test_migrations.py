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
