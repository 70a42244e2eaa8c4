"""Event ids are never handed out twice: SQLite's ``events`` table becomes AUTOINCREMENT.

Readers page the log by id (a follower's cursor, ``Last-Event-ID``, ``since=``, a webhook
receiver's dedup). Without AUTOINCREMENT SQLite numbers a new row max(id)+1 over the rows still
there, so once retention had forgotten the newest events their ids came back, below every
reader's cursor. AUTOINCREMENT keeps the highest id ever used (``sqlite_sequence``; copying the
rows back sets it). PostgreSQL's sequence never goes back: nothing changes there.

SQLite can only make a table AUTOINCREMENT by creating it anew, and the migration runs in one
transaction with foreign keys on (``PRAGMA foreign_keys`` cannot change inside it), while
``webhook_deliveries`` refers to ``events``. So the rows go to a temporary copy, the table is
dropped with the checks deferred (each delivery left without its event counts as one
violation), created again and filled from the copy under the name the deliveries refer to
(each row back clears its violations): the commit fails if any is left. Alembic's batch mode
fills the new table under another name and renames it, which leaves the violations counted.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COLUMNS = "id, type, user_id, vm_id, data, created_at"
COPY = "events_before_0014"


def _recreate_events(*, autoincrement: bool) -> None:
    """Create SQLite's ``events`` anew, with AUTOINCREMENT or without, keeping every row."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("PRAGMA defer_foreign_keys = ON")
    op.execute(f"CREATE TEMPORARY TABLE {COPY} AS SELECT {COLUMNS} FROM events")  # noqa: S608
    op.drop_index("ix_events_user_id_id", table_name="events")
    op.drop_table("events")
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("vm_id", sa.String(64), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sqlite_autoincrement=autoincrement,
    )
    op.create_index("ix_events_user_id_id", "events", ["user_id", "id"])
    op.execute(f"INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM {COPY}")  # noqa: S608
    op.execute(f"DROP TABLE temp.{COPY}")
    op.execute("PRAGMA defer_foreign_keys = OFF")


def upgrade() -> None:
    """Make SQLite's ``events`` AUTOINCREMENT, its rows and their deliveries kept."""
    _recreate_events(autoincrement=True)


def downgrade() -> None:
    """Make SQLite's ``events`` a plain INTEGER PRIMARY KEY again (ids may then be reused)."""
    _recreate_events(autoincrement=False)
