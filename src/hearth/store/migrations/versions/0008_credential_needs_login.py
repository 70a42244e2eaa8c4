"""A credential whose refresh the provider refused (``invalid_grant``): its user must log in
again. Set from what the CLI VM's agent reports; a new document clears it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``credentials.needs_login`` (false for every document so far)."""
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(
            sa.Column("needs_login", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    """Drop ``credentials.needs_login``."""
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("needs_login")
