"""VM lifetimes: ``timeoutS`` and ``idleTimeoutS`` with what each does, ``autoResume``, and the
running time a VM has used (paused time does not count).

The action CHECKs list the values as they are at this revision, written out: a migration is a
frozen record. ``vm_egress`` refers to ``vms``, so on SQLite its rows are set aside while ``vms``
is rebuilt (see ``hearth.store.migrations.referring_rows``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hearth.store.migrations.referring_rows import rows_set_aside

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ACTIONS = ("pause", "destroy")
_ENUM_LENGTH = 32


def upgrade() -> None:
    """Add the lifetime columns; every VM so far has no limit and resumes automatically."""
    listed = ", ".join(f"'{value}'" for value in ACTIONS)
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("timeout_s", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column(
                "timeout_action",
                sa.String(_ENUM_LENGTH),
                server_default="destroy",
                nullable=False,
            )
        )
        batch.add_column(sa.Column("idle_timeout_s", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column(
                "idle_action", sa.String(_ENUM_LENGTH), server_default="pause", nullable=False
            )
        )
        batch.add_column(
            sa.Column("auto_resume", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch.add_column(
            sa.Column("lifetime_used_s", sa.Float(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("running_since", sa.DateTime(timezone=True), nullable=True))
        for column in ("timeout_action", "idle_action"):
            batch.create_check_constraint(op.f(f"ck_vms_{column}"), f"{column} IN ({listed})")


def downgrade() -> None:
    """Drop the lifetime columns."""
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        batch.drop_constraint(op.f("ck_vms_idle_action"), type_="check")
        batch.drop_constraint(op.f("ck_vms_timeout_action"), type_="check")
        for name in (
            "running_since",
            "lifetime_used_s",
            "auto_resume",
            "idle_action",
            "idle_timeout_s",
            "timeout_action",
            "timeout_s",
        ):
            batch.drop_column(name)
