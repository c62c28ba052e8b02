"""metric: a covering index for the columnar reads

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:15:00

The job page reads every metric of a run ordered by (name, step, seq); with the value in the
index SQLite answers from the index alone, without one table look-up per row (800,000 for a
100,000-step run).
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_metric_columnar", "metric", ["job_id", "name", "step", "seq", "value"])
    op.drop_index("ix_metric_job_name_step", table_name="metric")


def downgrade() -> None:
    op.create_index("ix_metric_job_name_step", "metric", ["job_id", "name", "step"])
    op.drop_index("ix_metric_columnar", table_name="metric")
