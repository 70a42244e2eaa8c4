"""Initial schema: users, API keys, VMs and auth sessions.

The CHECK constraints on status-like columns list the enums' values as they were at this
revision, written out: a migration is a frozen record, so a fresh database and one upgraded
from here end with the same schema. Adding an enum member needs a new migration that widens
the constraint (a test compares the latest migration's constraints with the enums).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

VM_TYPES = ("cli", "browser")
VM_STATES = ("creating", "booting", "ready", "paused", "stopping", "destroyed", "failed")
BOOT_MODES = ("cold", "restore", "pool")
# The statuses an auth session is still moving through, then the ones it ends in.
ACTIVE_AUTH_STATUSES = (
    "pending",
    "cli_vm_starting",
    "cli_vm_ready",
    "browser_vm_starting",
    "awaiting_user",
    "credentials_captured",
    "delivering",
)
AUTH_STATUSES = (*ACTIVE_AUTH_STATUSES, "completed", "failed", "timeout", "cancelled")


def _one_of(values: tuple[str, ...], constraint: str) -> sa.Enum:
    """A VARCHAR(32) column CHECK-constrained, under the name ``constraint``, to ``values``."""
    return sa.Enum(
        *values,
        name=op.f(constraint),
        native_enum=False,
        create_constraint=True,
        length=32,
    )


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the four tables with their keys, checks and indexes."""
    op.create_table(
        "users",
        sa.Column("id", sa.String(128), nullable=False),
        _timestamp("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("last_used_at", nullable=True),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_user_id"), "api_keys", ["user_id"])
    op.create_table(
        "vms",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("vm_type", _one_of(VM_TYPES, "ck_vms_vm_type"), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("status", _one_of(VM_STATES, "ck_vms_status"), nullable=False),
        sa.Column("agent_url", sa.Text(), nullable=True),
        sa.Column("ip", sa.String(45), nullable=True),
        sa.Column("host_port", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("workdir", sa.Text(), nullable=True),
        sa.Column("disk_path", sa.Text(), nullable=True),
        sa.Column("disk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=True),
        sa.Column("boot_mode", _one_of(BOOT_MODES, "ck_vms_boot_mode"), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("mem_mib", sa.Integer(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("ready_at", nullable=True),
        _timestamp("destroyed_at", nullable=True),
        _timestamp("updated_at", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("pooled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vms")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_vms_user_id_users")),
    )
    op.create_index(op.f("ix_vms_user_id_status"), "vms", ["user_id", "status"])
    op.create_index(op.f("ix_vms_status"), "vms", ["status"])
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("status", _one_of(AUTH_STATUSES, "ck_auth_sessions_status"), nullable=False),
        sa.Column("vm_id", sa.String(64), nullable=True),
        sa.Column("browser_vm_id", sa.String(64), nullable=True),
        sa.Column("login_url", sa.Text(), nullable=True),
        sa.Column("view_url", sa.Text(), nullable=True),
        sa.Column("view_token_hash", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        _timestamp("completed_at", nullable=True),
        _timestamp("stage_deadline_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auth_sessions_user_id_users")
        ),
    )
    op.create_index(
        op.f("ix_auth_sessions_user_id_provider"), "auth_sessions", ["user_id", "provider"]
    )
    op.create_index(op.f("ix_auth_sessions_status"), "auth_sessions", ["status"])
    active = sa.column("status").in_(ACTIVE_AUTH_STATUSES)
    op.create_index(
        op.f("uq_auth_sessions_active_user_id_provider"),
        "auth_sessions",
        ["user_id", "provider"],
        unique=True,
        sqlite_where=active,
        postgresql_where=active,
    )


def downgrade() -> None:
    """Drop everything the upgrade created."""
    op.drop_table("auth_sessions")
    op.drop_table("vms")
    op.drop_table("api_keys")
    op.drop_table("users")
