"""The API boundary: no view link in the store, and API keys under a keyed hash.

``auth_sessions.view_url`` held each session's view link, token included, next to the token's
hash; the link is now shown once by the start that makes the session, so the column (and every
token it held) goes.

``api_keys.key_hash`` was the bare sha256 of the key; new keys are stored as HMAC-SHA256 under a
server secret kept outside the database. The hashes already stored cannot be converted without
their keys, so each row says how it is hashed: rows that exist now are marked ``sha256`` and
keep authenticating, and the first time such a key is used its row is rehashed to
``hmac-sha256``. Written with literal values, as the schema was at this revision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Drop the stored view links; mark every existing key hash as legacy sha256."""
    with op.batch_alter_table("auth_sessions") as batch:
        batch.drop_column("view_url")
    op.add_column(
        "api_keys",
        sa.Column("key_hash_scheme", sa.String(16), nullable=False, server_default="sha256"),
    )


def downgrade() -> None:
    """Give the column back (empty: the links are gone) and drop the hash scheme.

    Keys rehashed under HMAC no longer authenticate on the older code.
    """
    op.drop_column("api_keys", "key_hash_scheme")
    with op.batch_alter_table("auth_sessions") as batch:
        batch.add_column(sa.Column("view_url", sa.Text(), nullable=True))
