"""Frozen value objects the repositories return; ORM rows never leave the store."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.auth.states import TERMINAL, AuthStatus
from hearth.errors import InvalidInput
from hearth.events.types import DeliveryStatus
from hearth.runs.states import TERMINAL as RUN_TERMINAL
from hearth.runs.states import RunStatus
from hearth.vm.types import BootMode, LifetimeAction, VmState, VmType
from hearth_agent.wire import Provider

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

INACTIVE_VM_STATES = frozenset({VmState.DESTROYED, VmState.FAILED})
# A VM whose VMM runs, and so its agent (once resumed, for a paused one).
RUNNING_VM_STATES = (VmState.READY, VmState.UNHEALTHY, VmState.PAUSED)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def _require_aware(record: DataclassInstance) -> None:
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise InvalidInput(f"{f.name} must be timezone-aware, got {value.isoformat()}")


def _parse_provider(record: AuthSessionRecord | CredentialRecord | RunRecord) -> None:
    """Make the provider a Provider (rows give plain strings); InvalidInput if it is not one."""
    try:
        provider = Provider(record.provider)
    except ValueError:
        supported = ", ".join(Provider)
        shown = str(record.provider)[:64]
        raise InvalidInput(f"unknown provider {shown!r}; supported: {supported}") from None
    object.__setattr__(record, "provider", provider)


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    """A user known to Hearth."""

    id: str
    created_at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _require_aware(self)


@dataclass(frozen=True, kw_only=True)
class ApiKeyRecord:
    """An API key's metadata; the plaintext is never stored and the hash never leaves the store."""

    id: str
    user_id: str
    prefix: str  # the key's first characters, enough to recognise it in a list
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self)

    @property
    def is_revoked(self) -> bool:
        """Whether the key no longer authenticates."""
        return self.revoked_at is not None


@dataclass(frozen=True, kw_only=True)
class VmRecord:
    """A VM as persisted: identity, owner, size, where it is reachable and its lifecycle status."""

    id: str
    user_id: str
    vm_type: VmType
    backend: str
    vcpus: int
    mem_mib: int
    status: VmState = VmState.CREATING
    agent_url: str | None = None
    ip: str | None = None
    host_port: int | None = None
    pid: int | None = None
    workdir: Path | None = None
    disk_path: Path | None = None
    disk_bytes: int | None = None
    token_hash: str | None = field(default=None, repr=False)
    # The agent token sealed by the vault (``hearth.control.agent_tokens``); None once inactive.
    token_key_id: str | None = field(default=None, repr=False)
    token_nonce: bytes | None = field(default=None, repr=False)
    token_ciphertext: bytes | None = field(default=None, repr=False)
    boot_mode: BootMode | None = None
    created_at: datetime = field(default_factory=utc_now)
    ready_at: datetime | None = None
    destroyed_at: datetime | None = None
    updated_at: datetime = field(default_factory=utc_now)
    error: str | None = None
    pooled: bool = False
    agent_version: str | None = None  # as the agent last reported it (claim, heartbeat)
    timeout_s: int | None = None  # running seconds it may live (None: no limit)
    timeout_action: LifetimeAction = LifetimeAction.DESTROY
    idle_timeout_s: int | None = None  # seconds without use before idle_action (None: never)
    idle_action: LifetimeAction = LifetimeAction.PAUSE
    auto_resume: bool = True  # a call that needs it running resumes it when paused
    lifetime_used_s: float = 0.0  # running seconds used before running_since
    running_since: datetime | None = None  # when it last started running (None: not running)
    # Its disk key and (while hibernated) its saved state's key, sealed by the vault
    # (``hearth.control.vm_keys``); None once inactive.
    keys_key_id: str | None = field(default=None, repr=False)
    keys_nonce: bytes | None = field(default=None, repr=False)
    keys_ciphertext: bytes | None = field(default=None, repr=False)
    hibernated_at: datetime | None = None  # when it was last saved to disk

    def __post_init__(self) -> None:
        _require_aware(self)

    @property
    def is_active(self) -> bool:
        """Whether the VM still holds (or is acquiring) host resources."""
        return self.status not in INACTIVE_VM_STATES


# A VM row's fields that hold its agent token sealed (``hearth.control.agent_tokens``).
SEALED_TOKEN_FIELDS = ("token_key_id", "token_nonce", "token_ciphertext")
# A VM row's fields that hold its disk and saved-state keys sealed (``hearth.control.vm_keys``).
SEALED_KEYS_FIELDS = ("keys_key_id", "keys_nonce", "keys_ciphertext")


@dataclass(frozen=True, kw_only=True)
class AuthSessionRecord:
    """One run of the login flow for a user and provider, as persisted."""

    id: str
    user_id: str
    provider: Provider
    status: AuthStatus = AuthStatus.PENDING
    vm_id: str | None = None
    browser_vm_id: str | None = None
    login_url: str | None = None
    # The view link's token is shown once, by the start that made the session; only its hash
    # is kept, so neither the store nor any later read can hand the link out again.
    view_token_hash: str | None = field(default=None, repr=False)
    error_message: str | None = None
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    completed_at: datetime | None = None
    stage_deadline_at: datetime | None = None
    login_id: str | None = None  # the Browser VM agent's login, once it started
    egress_port: int | None = None  # the node port of the login's egress path, when it has one
    api_key_id: str | None = None  # the API key that started it: its view ends once revoked

    def __post_init__(self) -> None:
        _require_aware(self)
        _parse_provider(self)

    @property
    def is_terminal(self) -> bool:
        """Whether the session has ended (completed, failed, timed out or cancelled)."""
        return self.status in TERMINAL


class CredentialSource(StrEnum):
    """Where the stored credential document came from."""

    CAPTURED = "captured"  # taken from the Browser VM at the end of a login
    PULLED_BACK = "pulled_back"  # read back from a CLI VM after the CLI refreshed its tokens


def new_credential_id() -> str:
    """A fresh credential row id."""
    return f"cred_{secrets.token_hex(8)}"


@dataclass(frozen=True, kw_only=True)
class CredentialRecord:
    """A user's current credential document for one provider, sealed by the vault.

    ``nonce`` and ``ciphertext`` are only readable with the vault's key ``key_id``; ``sha256``
    is the digest of the plaintext document, the same value the agent reports for the file.
    ``updated_at`` is when the document last changed (delivery does not move it).
    """

    id: str = field(default_factory=new_credential_id)
    user_id: str
    provider: Provider
    key_id: str
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    sha256: str
    expires_at: datetime | None = None
    source: CredentialSource = CredentialSource.CAPTURED
    delivered_to_vm_id: str | None = None
    delivered_at: datetime | None = None
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    # The expiry event last told for this document ("expiring", "expired"); None: none yet.
    expiry_told: str | None = None
    # The provider refused to refresh this document (invalid_grant): its user must log in again.
    needs_login: bool = False

    def __post_init__(self) -> None:
        _require_aware(self)
        _parse_provider(self)


def new_run_id() -> str:
    """A fresh run id."""
    return f"run_{secrets.token_hex(8)}"


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One headless run of a vendor CLI in a CLI VM, as persisted (never the prompt).

    ``usage`` is the JSON text of the CLI's last reported usage; ``exec_cursor`` the last agent
    exec event read, from where a restarted controller reads on; ``last_event_id`` the id of the
    run's last event.
    """

    id: str = field(default_factory=new_run_id)
    user_id: str
    vm_id: str
    provider: Provider
    timeout_s: int
    status: RunStatus = RunStatus.STARTING
    model: str | None = None
    resume: str | None = None
    session_id: str | None = None
    exec_id: str | None = None
    exec_cursor: int = 0
    last_event_id: int = 0
    usage: str | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    failure_code: str | None = None
    error_message: str | None = None
    cancel_requested: bool = False
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    finished_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self)
        _parse_provider(self)

    @property
    def is_terminal(self) -> bool:
        """Whether the run has ended."""
        return self.status in RUN_TERMINAL


@dataclass(frozen=True, kw_only=True)
class RunEventRecord:
    """One stored event of a run: its id within the run, type and JSON data."""

    run_id: str
    seq: int
    type: str
    data: str
    created_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True, kw_only=True)
class EgressRecord:
    """A CLI VM's egress path as stored: the loopback port its guest forward dials, the
    providers delivered into it, and its own additions (``allow_out``) and removals."""

    vm_id: str
    port: int
    providers: frozenset[Provider] = frozenset()
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class WorkspaceRecord:
    """A user's persistent workspace volume as stored (``hearth.control.workspaces``)."""

    id: str  # names its file on the node
    user_id: str
    size_mib: int
    vm_id: str | None = None  # the VM it was last attached to
    # Its encryption key, sealed by the vault (bound to ``id``).
    seal_key_id: str | None = field(default=None, repr=False)
    seal_nonce: bytes | None = field(default=None, repr=False)
    seal_ciphertext: bytes | None = field(default=None, repr=False)
    created_at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        _require_aware(self)


# A workspace row's fields that hold its key sealed.
SEALED_WORKSPACE_KEY_FIELDS = ("seal_key_id", "seal_nonce", "seal_ciphertext")


@dataclass(frozen=True, kw_only=True)
class EventRecord:
    """One stored event: its id (the order of the log), name, whose, and JSON data."""

    id: int
    type: str
    user_id: str | None
    vm_id: str | None
    data: str
    created_at: datetime


def new_webhook_id() -> str:
    """A fresh webhook id."""
    return f"wh-{secrets.token_hex(8)}"


@dataclass(frozen=True, kw_only=True)
class WebhookRecord:
    """A webhook: where to, which events, and its signing secret as the vault sealed it."""

    id: str = field(default_factory=new_webhook_id)
    url: str
    events: tuple[str, ...]
    key_id: str
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    created_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True, kw_only=True)
class AttemptRecord:
    """One try of a delivery."""

    delivery_id: str
    n: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True, kw_only=True)
class DeliveryRecord:
    """One event on its way to one webhook (with the event, read with it)."""

    id: str
    webhook_id: str
    event_id: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    give_up_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SealedKind:
    """One kind of secret the vault seals into rows other than credentials': its table, its
    three columns (key id, nonce, ciphertext), and what the vault binds it to with the row's
    id (the seal's ``user_id``; the row id is its ``provider``), different per kind so that no
    kind opens as another."""

    table: str
    columns: tuple[str, str, str]
    bound_to: str


AGENT_TOKEN_SEAL = SealedKind("vms", SEALED_TOKEN_FIELDS, "agent-token")
VM_KEYS_SEAL = SealedKind("vms", SEALED_KEYS_FIELDS, "vm-keys")
WORKSPACE_KEY_SEAL = SealedKind("workspaces", SEALED_WORKSPACE_KEY_FIELDS, "workspace")
WEBHOOK_SECRET_SEAL = SealedKind("webhooks", ("key_id", "nonce", "ciphertext"), "webhook")
# Every kind, for re-sealing them all under a new master key (``hearth keys rotate-master``).
SEALED_KINDS = (AGENT_TOKEN_SEAL, VM_KEYS_SEAL, WORKSPACE_KEY_SEAL, WEBHOOK_SECRET_SEAL)


@dataclass(frozen=True)
class SealedValue:
    """A secret as one row keeps it sealed."""

    row_id: str
    key_id: str
    nonce: bytes
    ciphertext: bytes
