"""CLI VMs' egress paths: the loopback port each VM's guest forward dials, and its policy.

Kept so a restarted controller reopens a running CLI VM's way out where the VM expects it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``vm_egress``."""
    op.create_table(
        "vm_egress",
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("providers", sa.Text(), nullable=False),
        sa.Column("allow_out", sa.Text(), nullable=False),
        sa.Column("deny_out", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("vm_id", name=op.f("pk_vm_egress")),
        sa.ForeignKeyConstraint(["vm_id"], ["vms.id"], name=op.f("fk_vm_egress_vm_id_vms")),
    )


def downgrade() -> None:
    """Drop ``vm_egress``."""
    op.drop_table("vm_egress")
