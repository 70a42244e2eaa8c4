"""What a restarted controller needs to pick a login up where it was: the Browser VM agent's
login id and the node port of the login's egress path.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID_MAX = 64


def upgrade() -> None:
    """Add ``auth_sessions.login_id`` and ``egress_port`` (unknown for sessions so far)."""
    with op.batch_alter_table("auth_sessions") as batch:
        batch.add_column(sa.Column("login_id", sa.String(_ID_MAX), nullable=True))
        batch.add_column(sa.Column("egress_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("auth_sessions") as batch:
        batch.drop_column("egress_port")
        batch.drop_column("login_id")
