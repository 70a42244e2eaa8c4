"""Users' persistent workspace volumes: one per user, its size, its key sealed by the vault, and
the VM it was last attached to.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``workspaces``."""
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("size_mib", sa.Integer(), nullable=False),
        sa.Column("vm_id", sa.String(64), nullable=True),
        sa.Column("seal_key_id", sa.String(64), nullable=True),
        sa.Column("seal_nonce", sa.LargeBinary(), nullable=True),
        sa.Column("seal_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_workspaces_user_id_users")
        ),
        sa.UniqueConstraint("user_id", name=op.f("uq_workspaces_user_id")),
    )


def downgrade() -> None:
    """Drop ``workspaces`` (the volumes' files stay on the node until removed by hand)."""
    op.drop_table("workspaces")
