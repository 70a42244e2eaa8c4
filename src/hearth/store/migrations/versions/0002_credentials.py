"""Credentials: each user's current, vault-encrypted credential document per provider.

The provider and source CHECKs list the values as they were at this revision, written out: a
migration is a frozen record. Adding a provider (or a source) needs a new migration that widens
the constraint (a test compares the latest migration's constraints with the enums).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PROVIDERS = ("claude_code", "codex", "gemini_cli", "oidc")
CREDENTIAL_SOURCES = ("captured", "pulled_back")


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the credentials table with its owner key, one-per-provider rule and checks."""
    op.create_table(
        "credentials",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        _timestamp("expires_at", nullable=True),
        sa.Column(
            "source",
            sa.Enum(
                *CREDENTIAL_SOURCES,
                name=op.f("ck_credentials_source"),
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("delivered_to_vm_id", sa.String(64), nullable=True),
        _timestamp("delivered_at", nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credentials_user_id_users")
        ),
        sa.UniqueConstraint("user_id", "provider", name=op.f("uq_credentials_user_id_provider")),
        sa.CheckConstraint(
            sa.column("provider").in_(PROVIDERS), name=op.f("ck_credentials_provider")
        ),
    )


def downgrade() -> None:
    """Drop the credentials table."""
    op.drop_table("credentials")
