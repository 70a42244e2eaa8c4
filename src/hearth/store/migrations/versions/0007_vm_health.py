"""VM and credential health: the ``unhealthy`` status (a VM whose agent misses its heartbeats),
the agent version each VM last reported, and which expiry event a credential document was last
told with (so ``credential.expiring``/``expired`` go out once per document, whichever
controller sees it first).

The status CHECK lists the values as they are at this revision, written out: a migration is a
frozen record. ``vm_egress`` refers to ``vms``, so on SQLite its rows are set aside while ``vms``
is rebuilt (see ``hearth.store.migrations.referring_rows``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

from hearth.store.migrations.referring_rows import rows_set_aside

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BEFORE = ("creating", "booting", "ready", "paused", "stopping", "destroyed", "failed")
VM_STATES = (
    "creating", "booting", "ready", "unhealthy", "paused", "stopping", "destroyed", "failed"
)  # fmt: skip


def _status_check(batch: BatchOperations, values: tuple[str, ...]) -> None:
    """Replace the ``vms.status`` CHECK with one allowing ``values``."""
    batch.drop_constraint(op.f("ck_vms_status"), type_="check")
    listed = ", ".join(f"'{value}'" for value in values)
    batch.create_check_constraint(op.f("ck_vms_status"), f"status IN ({listed})")


def upgrade() -> None:
    """Allow ``unhealthy``; add ``agent_version``."""
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("agent_version", sa.String(32), nullable=True))
        _status_check(batch, VM_STATES)
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("expiry_told", sa.String(16), nullable=True))


def downgrade() -> None:
    """Unhealthy VMs count as ready again; drop ``agent_version``."""
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("expiry_told")
    op.execute("UPDATE vms SET status = 'ready' WHERE status = 'unhealthy'")
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        _status_check(batch, BEFORE)
        batch.drop_column("agent_version")
