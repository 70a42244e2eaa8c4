"""The API key that started each login: its view link dies once that key is revoked.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_ID_MAX = 64


def upgrade() -> None:
    """Add ``auth_sessions.api_key_id`` (unknown for the logins started before it)."""
    with op.batch_alter_table("auth_sessions") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(_ID_MAX), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("auth_sessions") as batch:
        batch.drop_column("api_key_id")
