"""Hibernation: the ``hibernating`` and ``hibernated`` statuses, the ``wake`` boot mode, the
``hibernate`` lifetime action, the VM's disk and saved-state keys sealed in its row, and when it
was last hibernated.

The CHECKs list the values as they are at this revision, written out: a migration is a frozen
record. ``vm_egress`` refers to ``vms``, so on SQLite its rows are set aside while ``vms``
is rebuilt (see ``hearth.store.migrations.referring_rows``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

from hearth.store.migrations.referring_rows import rows_set_aside

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_KEY_ID_MAX = 64
BEFORE_STATES = (
    "creating", "booting", "ready", "unhealthy", "paused", "stopping", "destroyed", "failed"
)  # fmt: skip
VM_STATES = (
    "creating", "booting", "ready", "unhealthy", "paused", "hibernating", "hibernated",
    "stopping", "destroyed", "failed",
)  # fmt: skip
BEFORE_BOOT_MODES = ("cold", "restore", "pool")
BOOT_MODES = ("cold", "restore", "pool", "wake")
BEFORE_ACTIONS = ("pause", "destroy")
ACTIONS = ("pause", "hibernate", "destroy")


def _check(batch: BatchOperations, column: str, values: tuple[str, ...]) -> None:
    """Replace the ``vms.<column>`` CHECK with one allowing ``values``."""
    batch.drop_constraint(op.f(f"ck_vms_{column}"), type_="check")
    listed = ", ".join(f"'{value}'" for value in values)
    batch.create_check_constraint(op.f(f"ck_vms_{column}"), f"{column} IN ({listed})")


def upgrade() -> None:
    """Allow the new statuses and action; add the sealed keys and ``hibernated_at``."""
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("keys_key_id", sa.String(_KEY_ID_MAX), nullable=True))
        batch.add_column(sa.Column("keys_nonce", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("keys_ciphertext", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("hibernated_at", sa.DateTime(timezone=True), nullable=True))
        _check(batch, "status", VM_STATES)
        _check(batch, "boot_mode", BOOT_MODES)
        for column in ("timeout_action", "idle_action"):
            _check(batch, column, ACTIONS)


def downgrade() -> None:
    """Hibernated VMs cannot be woken by older code: they become failed; the hibernate action
    becomes pause; drop the new columns."""
    op.execute(
        "UPDATE vms SET status = 'failed', error = 'hibernated when Hearth was downgraded' "
        "WHERE status IN ('hibernating', 'hibernated')"
    )
    for column in ("timeout_action", "idle_action"):
        op.execute(f"UPDATE vms SET {column} = 'pause' WHERE {column} = 'hibernate'")  # noqa: S608
    op.execute("UPDATE vms SET boot_mode = 'restore' WHERE boot_mode = 'wake'")
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        for column in ("timeout_action", "idle_action"):
            _check(batch, column, BEFORE_ACTIONS)
        _check(batch, "boot_mode", BEFORE_BOOT_MODES)
        _check(batch, "status", BEFORE_STATES)
        for name in ("hibernated_at", "keys_ciphertext", "keys_nonce", "keys_key_id"):
            batch.drop_column(name)
