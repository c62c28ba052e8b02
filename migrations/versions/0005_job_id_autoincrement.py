"""job: AUTOINCREMENT, so an id is never given twice

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 12:45:00

Without it SQLite gives a new row max(id) + 1: delete the newest job and the next one gets
its id, and with it the run folder name (runs/000042) and the history of the deleted run in
any link, log or script that named it. With AUTOINCREMENT an id names one run forever.
SQLite cannot add it to a table in place: batch mode copies the table (ids kept). The copy
drops the old table, which with foreign keys on would cascade to every metric and event, so
app.db.migrate runs migrations with foreign keys off and checks them after.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", recreate="always",
                              table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    with op.batch_alter_table("job", recreate="always"):
        pass
