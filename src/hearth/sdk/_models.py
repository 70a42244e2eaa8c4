"""The values the API answers with, typed: a VM and a login session (snake_case attributes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Generic, Self, TypeVar

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")


class VmType(StrEnum):
    """What a VM is for."""

    CLI = "cli"  # runs the user's AI coding CLIs
    BROWSER = "browser"  # serves one login in a browser the user watches


class VmStatus(StrEnum):
    """Where a VM is in its life (the API may add states; ``Vm.status`` is then a plain str)."""

    CREATING = "creating"  # resources being prepared
    BOOTING = "booting"  # VMM running, agent not healthy yet
    READY = "ready"  # agent healthy: commands run
    UNHEALTHY = "unhealthy"  # VMM runs, agent misses heartbeats (back to ready, or failed)
    PAUSED = "paused"  # vCPUs stopped, memory kept
    HIBERNATING = "hibernating"  # memory and device state being saved to disk
    HIBERNATED = "hibernated"  # saved to disk, no VMM process; resume wakes it
    STOPPING = "stopping"  # teardown under way
    DESTROYED = "destroyed"  # nothing of it is left
    FAILED = "failed"  # died or never became healthy; ``error`` says why


class AuthStatus(StrEnum):
    """Where a login session is (the API may add states; ``status`` is then a plain str)."""

    PENDING = "pending"  # accepted, nothing started yet
    CLI_VM_STARTING = "cli_vm_starting"  # the user's CLI VM is being created or checked
    CLI_VM_READY = "cli_vm_ready"  # the CLI VM is up
    BROWSER_VM_STARTING = "browser_vm_starting"  # the Browser VM is being created
    AWAITING_USER = "awaiting_user"  # the login page is up: the user signs in at ``view_url``
    CREDENTIALS_CAPTURED = "credentials_captured"  # tokens captured, sealed at rest
    DELIVERING = "delivering"  # being written into the CLI VM
    COMPLETED = "completed"  # delivered and verified
    FAILED = "failed"  # a stage failed; ``error_message`` says which and why
    TIMEOUT = "timeout"  # a stage's deadline passed
    CANCELLED = "cancelled"  # cancelled through the API


AUTH_ENDED = frozenset(
    {AuthStatus.COMPLETED, AuthStatus.FAILED, AuthStatus.TIMEOUT, AuthStatus.CANCELLED}
)


def _known(enum: type[StrEnum], value: object) -> str:
    """``value`` as a member of ``enum`` when it is one, else as the plain string it is."""
    text = str(value)
    try:
        return enum(text)
    except ValueError:
        return text


def _instant(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def snake_fields(body: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """``body``'s keys in snake_case (camelCase and snake_case both read), some ``renamed``."""
    snake = {_CAMEL_HUMP.sub("_", key).lower(): value for key, value in body.items()}
    return {renamed.get(key, key): value for key, value in snake.items()}


def _field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in fields(cls)]


class WireRecord:
    """A value read from the API's JSON and updated in place by newer answers about it."""

    # A key the wire names otherwise (after snake_casing), timestamps, statuses to type.
    _renamed: ClassVar[Mapping[str, str]] = {}
    _instants: ClassVar[tuple[str, ...]] = ()
    _statuses: ClassVar[Mapping[str, type[StrEnum]]] = {}
    # Fields some answers lack (null there): a newer None keeps what this object knew.
    _kept: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Self:
        """The value from its JSON object (keys the SDK does not know yet are left out)."""
        names = _field_names(cls)
        known = {k: v for k, v in snake_fields(body, cls._renamed).items() if k in names}
        for name in cls._instants:
            known[name] = _instant(known.get(name))
        for name, enum in cls._statuses.items():
            known[name] = _known(enum, known[name])
        return cls(**known)

    def take(self, newer: WireRecord) -> Self:
        """Update this object in place from a newer view of the same thing; itself."""
        for name in _field_names(type(newer)):
            value = getattr(newer, name)
            if value is not None or name not in self._kept:
                setattr(self, name, value)
        return self


H = TypeVar("H")


class Bound(WireRecord, Generic[H]):
    """A value with the client that read it, whose methods call the API about it (``Vm``,
    ``AuthSession`` and their async twins put this first among their bases)."""

    def __init__(self, http: H, info: WireRecord) -> None:
        self._http = http
        self.take(info)


@dataclass(kw_only=True)
class VmInfo(WireRecord):
    """A VM as the API shows it."""

    _instants = ("created_at", "ready_at", "destroyed_at", "hibernated_at")
    _statuses: ClassVar[Mapping[str, type[StrEnum]]] = {"status": VmStatus, "vm_type": VmType}
    _kept = ("agent_token",)

    id: str
    user_id: str
    vm_type: str
    status: str
    backend: str
    vcpus: int
    mem_mib: int
    agent_url: str | None = None
    boot_mode: str | None = None
    disk_bytes: int | None = None
    created_at: datetime | None = None
    ready_at: datetime | None = None
    destroyed_at: datetime | None = None
    error: str | None = None
    agent_version: str | None = None
    agent_outdated: bool = False
    timeout_s: int | None = None
    timeout_action: str | None = None
    idle_timeout_s: int | None = None
    idle_action: str | None = None
    auto_resume: bool = True
    lifetime_used_s: float = 0.0
    hibernated_at: datetime | None = None
    # Shown once, in the answer that created the VM.
    agent_token: str | None = field(default=None, repr=False)


@dataclass(kw_only=True)
class AuthSessionInfo(WireRecord):
    """A login session: where it is, its VMs, and once it ends, how."""

    _renamed: ClassVar[Mapping[str, str]] = {"session_id": "id"}
    _instants = ("created_at", "updated_at", "completed_at")
    _statuses: ClassVar[Mapping[str, type[StrEnum]]] = {"status": AuthStatus}
    _kept = ("provider", "user_id", "view_url")

    id: str
    status: str
    provider: str | None = None
    user_id: str | None = None
    vm_id: str | None = None
    vm_ip: str | None = None
    browser_vm_id: str | None = None
    login_url: str | None = None
    error_message: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    # The token-gated page where the user watches and types: only in the answer that started
    # the session (the API never stores it).
    view_url: str | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        """Whether the session has ended (completed, failed, timed out or cancelled)."""
        return self.status in AUTH_ENDED
