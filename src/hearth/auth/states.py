"""Auth session statuses and their transition table (pure; persisted with compare-and-set)."""

from __future__ import annotations

from enum import StrEnum

from hearth.errors import Conflict


class AuthStatus(StrEnum):
    """Where an auth session is in the flow."""

    PENDING = "pending"  # accepted, nothing started yet
    CLI_VM_STARTING = "cli_vm_starting"  # the user's CLI VM is being created or checked
    CLI_VM_READY = "cli_vm_ready"  # the CLI VM's agent is healthy and claimed
    BROWSER_VM_STARTING = "browser_vm_starting"  # the Browser VM is being created
    AWAITING_USER = "awaiting_user"  # the login page is up; waiting for the user to log in
    CREDENTIALS_CAPTURED = "credentials_captured"  # tokens captured and encrypted at rest
    DELIVERING = "delivering"  # writing the document into the CLI VM
    COMPLETED = "completed"  # delivered and verified by sha256; Browser VM destroyed
    FAILED = "failed"  # a stage failed; error_message says which and why
    TIMEOUT = "timeout"  # a stage's deadline passed (e.g. the user never logged in)
    CANCELLED = "cancelled"  # cancelled through the API


TERMINAL = frozenset(
    {AuthStatus.COMPLETED, AuthStatus.FAILED, AuthStatus.TIMEOUT, AuthStatus.CANCELLED}
)
_ENDINGS = frozenset({AuthStatus.FAILED, AuthStatus.TIMEOUT, AuthStatus.CANCELLED})
# Every stage before the user is shown the login (its URL, the Browser VM's screen).
BEFORE_LOGIN = frozenset(
    {
        AuthStatus.PENDING,
        AuthStatus.CLI_VM_STARTING,
        AuthStatus.CLI_VM_READY,
        AuthStatus.BROWSER_VM_STARTING,
    }
)

TRANSITIONS: dict[AuthStatus, frozenset[AuthStatus]] = {
    AuthStatus.PENDING: frozenset({AuthStatus.CLI_VM_STARTING}) | _ENDINGS,
    AuthStatus.CLI_VM_STARTING: frozenset({AuthStatus.CLI_VM_READY}) | _ENDINGS,
    AuthStatus.CLI_VM_READY: frozenset({AuthStatus.BROWSER_VM_STARTING}) | _ENDINGS,
    AuthStatus.BROWSER_VM_STARTING: frozenset({AuthStatus.AWAITING_USER}) | _ENDINGS,
    AuthStatus.AWAITING_USER: frozenset({AuthStatus.CREDENTIALS_CAPTURED}) | _ENDINGS,
    AuthStatus.CREDENTIALS_CAPTURED: frozenset({AuthStatus.DELIVERING}) | _ENDINGS,
    AuthStatus.DELIVERING: frozenset({AuthStatus.COMPLETED}) | _ENDINGS,
    AuthStatus.COMPLETED: frozenset(),
    AuthStatus.FAILED: frozenset(),
    AuthStatus.TIMEOUT: frozenset(),
    AuthStatus.CANCELLED: frozenset(),
}


def check_auth_transition(session_id: str, old: AuthStatus, new: AuthStatus) -> None:
    """Raise Conflict unless the table allows ``old → new``."""
    if new not in TRANSITIONS[old]:
        raise Conflict(f"auth session {session_id} cannot go from {old.value} to {new.value}")
