"""A VM's agent token kept sealed in its row (vault, bound to the VM's id) instead of in clear
in its work dir, so a restarted controller opens it for the VMs it adopts.

Adding columns alters SQLite's ``vms`` in place; dropping them rebuilds it, so the downgrade
sets ``vm_egress``'s rows aside meanwhile (see ``hearth.store.migrations.referring_rows``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hearth.store.migrations.referring_rows import rows_set_aside

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KEY_ID_MAX = 64


def upgrade() -> None:
    """Add ``vms.token_key_id``, ``token_nonce`` and ``token_ciphertext`` (empty so far)."""
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("token_key_id", sa.String(_KEY_ID_MAX), nullable=True))
        batch.add_column(sa.Column("token_nonce", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("token_ciphertext", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Drop the sealed token's columns."""
    with rows_set_aside("vm_egress"), op.batch_alter_table("vms") as batch:
        batch.drop_column("token_ciphertext")
        batch.drop_column("token_nonce")
        batch.drop_column("token_key_id")
