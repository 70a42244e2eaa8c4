"""The database schema as SQLAlchemy declarative models; the migrations must produce exactly it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    column,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hearth.auth.states import TERMINAL, AuthStatus
from hearth.events.types import DeliveryStatus
from hearth.runs.states import RunStatus
from hearth.store.columns import MessageText, PathText, UtcDateTime, str_enum
from hearth.store.records import CredentialSource
from hearth.vm.types import BootMode, LifetimeAction, VmState, VmType
from hearth_agent.wire import Provider

USER_ID_MAX = 128
ID_MAX = 64
PROVIDER_MAX = 32
KEY_ID_MAX = 64

# Every constraint and index gets a predictable name, so migrations can refer to it.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The statuses an auth session is still moving through; at most one per user and provider.
ACTIVE_AUTH_STATUSES = tuple(s.value for s in AuthStatus if s not in TERMINAL)


def _provider_check() -> CheckConstraint:
    """A CHECK that the row's provider is exactly one of the ``Provider`` enum's values, so the
    database refuses a provider the agent does not know (a new one per table: a constraint
    belongs to one)."""
    return CheckConstraint(column("provider").in_([p.value for p in Provider]), name="provider")


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    """A user: the owner of keys, VMs and auth sessions."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(USER_ID_MAX), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiKeyRow(Base):
    """An API key, stored as a hash of its plaintext (``key_hash_scheme`` says which)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # "hmac-sha256" (under the server's key-hash secret); "sha256" for rows stored before it,
    # rehashed when their key is next used.
    key_hash_scheme: Mapped[str] = mapped_column(String(16), server_default="sha256")
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class VmRow(Base):
    """A VM Hearth runs or ran."""

    __tablename__ = "vms"
    __table_args__ = (
        Index("ix_vms_user_id_status", "user_id", "status"),
        Index("ix_vms_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vm_type: Mapped[VmType] = mapped_column(str_enum(VmType, name="vm_type"))
    backend: Mapped[str] = mapped_column(String(32))
    status: Mapped[VmState] = mapped_column(str_enum(VmState, name="status"))
    agent_url: Mapped[str | None] = mapped_column(Text())
    ip: Mapped[str | None] = mapped_column(String(45))
    host_port: Mapped[int | None]
    pid: Mapped[int | None]
    workdir: Mapped[Path | None] = mapped_column(PathText())
    disk_path: Mapped[Path | None] = mapped_column(PathText())
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger())
    token_hash: Mapped[str | None] = mapped_column(String(64))
    # The agent token itself, sealed by the vault (bound to the VM's id) while the VM is active.
    token_key_id: Mapped[str | None] = mapped_column(String(KEY_ID_MAX))
    token_nonce: Mapped[bytes | None] = mapped_column(LargeBinary())
    token_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary())
    boot_mode: Mapped[BootMode | None] = mapped_column(str_enum(BootMode, name="boot_mode"))
    vcpus: Mapped[int]
    mem_mib: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ready_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    destroyed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    error: Mapped[str | None] = mapped_column(MessageText())
    pooled: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    agent_version: Mapped[str | None] = mapped_column(String(32))
    # Lifetimes (hearth.control.lifetimes): the limits, what each does, and the running time
    # used so far (``lifetime_used_s`` before ``running_since``; paused time does not count).
    timeout_s: Mapped[int | None]
    timeout_action: Mapped[LifetimeAction] = mapped_column(
        str_enum(LifetimeAction, name="timeout_action"), server_default="destroy"
    )
    idle_timeout_s: Mapped[int | None]
    idle_action: Mapped[LifetimeAction] = mapped_column(
        str_enum(LifetimeAction, name="idle_action"), server_default="pause"
    )
    auto_resume: Mapped[bool] = mapped_column(Boolean(), server_default=true())
    lifetime_used_s: Mapped[float] = mapped_column(Float(), server_default="0")
    running_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Its disk key and (while hibernated) saved-state key, sealed by the vault (bound to the
    # VM's id) while the VM is active; when it was last hibernated.
    keys_key_id: Mapped[str | None] = mapped_column(String(KEY_ID_MAX))
    keys_nonce: Mapped[bytes | None] = mapped_column(LargeBinary())
    keys_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary())
    hibernated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AuthSessionRow(Base):
    """One run of the login flow for a user and provider."""

    __tablename__ = "auth_sessions"
    __table_args__ = (
        Index("ix_auth_sessions_user_id_provider", "user_id", "provider"),
        Index("ix_auth_sessions_status", "status"),
        # Two API calls racing to start a login for the same provider cannot both succeed.
        Index(
            "uq_auth_sessions_active_user_id_provider",
            "user_id",
            "provider",
            unique=True,
            sqlite_where=column("status").in_(ACTIVE_AUTH_STATUSES),
            postgresql_where=column("status").in_(ACTIVE_AUTH_STATUSES),
        ),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    provider: Mapped[str] = mapped_column(String(64))
    status: Mapped[AuthStatus] = mapped_column(str_enum(AuthStatus, name="status"))
    vm_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    browser_vm_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    login_url: Mapped[str | None] = mapped_column(Text())
    view_token_hash: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(MessageText())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    stage_deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # What a restarted controller needs to pick the login up again: the Browser VM agent's login
    # id, and the node port of the login's egress path (the Browser VM's QEMU dials it).
    login_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    egress_port: Mapped[int | None]
    # The API key whose request started the login: its view link dies once that key is revoked.
    api_key_id: Mapped[str | None] = mapped_column(String(ID_MAX))


class CredentialRow(Base):
    """A user's current credential document for one provider, encrypted by the vault.

    The provider CHECK lists exactly the ``Provider`` enum, so the database refuses a document
    the agent could never write into a CLI VM.
    """

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("user_id", "provider"),
        _provider_check(),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    provider: Mapped[str] = mapped_column(String(PROVIDER_MAX))
    key_id: Mapped[str] = mapped_column(String(KEY_ID_MAX))
    nonce: Mapped[bytes] = mapped_column(LargeBinary())
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary())
    sha256: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    source: Mapped[CredentialSource] = mapped_column(str_enum(CredentialSource, name="source"))
    delivered_to_vm_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expiry_told: Mapped[str | None] = mapped_column(String(16))
    needs_login: Mapped[bool] = mapped_column(Boolean(), server_default=false())


class RunRow(Base):
    """One headless run of a vendor CLI in a CLI VM: who, which provider, how it went."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_vm_id_created_at", "vm_id", "created_at"),
        Index("ix_runs_status", "status"),
        _provider_check(),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vm_id: Mapped[str] = mapped_column(String(ID_MAX))
    provider: Mapped[str] = mapped_column(String(PROVIDER_MAX))
    status: Mapped[RunStatus] = mapped_column(str_enum(RunStatus, name="status"))
    model: Mapped[str | None] = mapped_column(String(128))
    # The CLI's own conversation id: the one it resumed, then the one it reported.
    resume: Mapped[str | None] = mapped_column(String(256))
    session_id: Mapped[str | None] = mapped_column(String(256))
    exec_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    # The last agent exec event consumed: a controller restart reads on from here.
    exec_cursor: Mapped[int] = mapped_column(BigInteger(), server_default="0")
    last_event_id: Mapped[int] = mapped_column(BigInteger(), server_default="0")
    usage: Mapped[str | None] = mapped_column(Text())  # JSON
    exit_code: Mapped[int | None]
    exit_signal: Mapped[int | None]
    failure_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(MessageText())
    cancel_requested: Mapped[bool] = mapped_column(Boolean(), server_default=false())
    timeout_s: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class RunEventRow(Base):
    """One event of a run, kept (bounded) so a client that reconnects gets the rest."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text())  # JSON
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class VmEgressRow(Base):
    """A CLI VM's way out: the loopback port its guest forward dials (fixed in the running
    VMM's command line), and what it may reach. A restarted controller reopens it from here."""

    __tablename__ = "vm_egress"

    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), primary_key=True)
    port: Mapped[int]
    providers: Mapped[str] = mapped_column(Text())  # JSON list of Provider values
    allow_out: Mapped[str] = mapped_column(Text())  # JSON list of host patterns
    deny_out: Mapped[str] = mapped_column(Text())  # JSON list of host patterns
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WorkspaceRow(Base):
    """A user's persistent workspace volume: its file's id, size, the key it is encrypted under
    (sealed by the vault, bound to its id), and the VM it is attached to."""

    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), unique=True)
    size_mib: Mapped[int]
    vm_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    seal_key_id: Mapped[str | None] = mapped_column(String(KEY_ID_MAX))
    seal_nonce: Mapped[bytes | None] = mapped_column(LargeBinary())
    seal_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


# SQLite numbers rows itself only for an INTEGER PRIMARY KEY.
SERIAL = BigInteger().with_variant(Integer(), "sqlite")


class EventRow(Base):
    """One event, written before anything is told of it (the outbox webhooks deliver from)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_user_id_id", "user_id", "id"),
        # Readers page by id, so an id must never come back once retention has forgotten the
        # newest events: without AUTOINCREMENT SQLite numbers max(id)+1 over the rows left.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(SERIAL, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(USER_ID_MAX))
    vm_id: Mapped[str | None] = mapped_column(String(ID_MAX))
    data: Mapped[str] = mapped_column(Text())  # JSON object
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WebhookRow(Base):
    """A receiver of events; its signing secret sealed by the vault like a credential."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    url: Mapped[str] = mapped_column(Text())
    events: Mapped[str] = mapped_column(Text())  # JSON list of event names
    key_id: Mapped[str] = mapped_column(String(KEY_ID_MAX))
    nonce: Mapped[bytes] = mapped_column(LargeBinary())
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WebhookDeliveryRow(Base):
    """One event on its way to one webhook: retried until delivered or its deadline passes."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_MAX), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"))
    event_id: Mapped[int] = mapped_column(BigInteger(), ForeignKey("events.id"))
    status: Mapped[DeliveryStatus] = mapped_column(str_enum(DeliveryStatus, name="status"))
    attempts: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    give_up_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(MessageText())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WebhookAttemptRow(Base):
    """One try of a delivery: when, what the receiver answered (or why nothing), how long."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(MessageText())
    duration_ms: Mapped[int]


users_table = Base.metadata.tables["users"]
api_keys_table = Base.metadata.tables["api_keys"]
vms_table = Base.metadata.tables["vms"]
auth_sessions_table = Base.metadata.tables["auth_sessions"]
credentials_table = Base.metadata.tables["credentials"]
runs_table = Base.metadata.tables["runs"]
run_events_table = Base.metadata.tables["run_events"]
vm_egress_table = Base.metadata.tables["vm_egress"]
workspaces_table = Base.metadata.tables["workspaces"]
events_table = Base.metadata.tables["events"]
webhooks_table = Base.metadata.tables["webhooks"]
webhook_deliveries_table = Base.metadata.tables["webhook_deliveries"]
webhook_attempts_table = Base.metadata.tables["webhook_attempts"]
