"""dataset registry: name, source, kind, original file, size and stats of a dataset

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 23:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults so the rows registered before (the demo dataset) get a value.
    with op.batch_alter_table("dataset_entry") as batch:
        batch.add_column(sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200),
                                   nullable=False, server_default=""))
        batch.add_column(sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=20),
                                   nullable=False, server_default="path"))
        batch.add_column(sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20),
                                   nullable=False, server_default="kto"))
        batch.add_column(sa.Column("original_filename",
                                   sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch.add_column(sa.Column("original_path", sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("stats", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_entry") as batch:
        for column in ("stats", "size_bytes", "original_path", "original_filename", "kind",
                       "source", "name"):
            batch.drop_column(column)
