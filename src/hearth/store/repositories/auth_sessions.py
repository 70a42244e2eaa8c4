"""Auth sessions: one row per login flow, moved through its statuses by compare-and-set."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import IntegrityError

from hearth.auth.states import TERMINAL, AuthStatus, check_auth_transition
from hearth.errors import ActiveSessionExists
from hearth.store.models import ACTIVE_AUTH_STATUSES, auth_sessions_table, vms_table
from hearth.store.records import INACTIVE_VM_STATES, AuthSessionRecord
from hearth.store.repositories._base import (
    Coerce,
    as_int,
    as_str,
    as_timestamp,
    optional,
    to_record,
)
from hearth.store.repositories._status import StatusRepository

# What ``update``/``transition`` may change; the rest is identity or kept by the repository.
UPDATABLE_FIELDS: dict[str, Coerce] = {
    "vm_id": optional(as_str),
    "browser_vm_id": optional(as_str),
    "login_id": optional(as_str),
    "egress_port": optional(as_int),
    "login_url": optional(as_str),
    "view_token_hash": optional(as_str),
    "error_message": optional(as_str),
    "stage_deadline_at": optional(as_timestamp),
}

_table = auth_sessions_table
_ENDED = tuple(status.value for status in TERMINAL)
_VM_GONE = tuple(state.value for state in INACTIVE_VM_STATES)


class AuthSessionRepo(
    StatusRepository[AuthSessionRecord, AuthStatus],
    table=auth_sessions_table,
    record=AuthSessionRecord,
    status=AuthStatus,
    what="auth session",
    updatable=UPDATABLE_FIELDS,
    check=check_auth_transition,
    stamps=dict.fromkeys(TERMINAL, "completed_at"),
):
    """Persists auth sessions; at most one non-terminal session per user and provider.

    Entering a terminal status stamps ``completed_at``.
    """

    async def _explain_other_failure(self, record: AuthSessionRecord, exc: IntegrityError) -> None:
        """ActiveSessionExists (a Conflict) when the user already has an active session for
        the provider: the one constraint left. The session that holds it may have ended since;
        the caller decides whether to try again."""
        if record.status not in TERMINAL:
            active = await self.find_active(record.user_id, record.provider)
            which = f" {active.id} ({active.status.value})" if active is not None else ""
            raise ActiveSessionExists(
                f"user {record.user_id} already has an active {record.provider} auth session{which}"
            ) from exc

    async def find_active(self, user_id: str, provider: str) -> AuthSessionRecord | None:
        """The user's session for ``provider`` that has not ended yet, if any."""
        statement = select(_table).where(
            _table.c.user_id == user_id,
            _table.c.provider == provider,
            _table.c.status.in_(ACTIVE_AUTH_STATUSES),
        )
        row = await self._read_one(statement)
        return None if row is None else to_record(AuthSessionRecord, row)

    async def ended_naming(self, browser_vm_ids: Collection[str]) -> list[AuthSessionRecord]:
        """The ended sessions that name one of ``browser_vm_ids`` as their Browser VM."""
        if not browser_vm_ids:
            return []
        statement = select(_table).where(
            _table.c.browser_vm_id.in_(list(browser_vm_ids)),
            _table.c.status.not_in(ACTIVE_AUTH_STATUSES),
        )
        return await self._read_records(AuthSessionRecord, statement)

    async def prune_ended(self, before: datetime) -> int:
        """Forget the sessions that ended before ``before``, in one statement; how many went.
        A session that has not ended is never touched, nor one whose Browser VM still holds
        resources: the controller's next start finds that VM by its session (``ended_naming``)
        and destroys it."""
        browser_vm_left = exists().where(
            vms_table.c.id == _table.c.browser_vm_id, vms_table.c.status.not_in(_VM_GONE)
        )
        # A session stored ended without its end stamped has at least its last change.
        ended_at = func.coalesce(_table.c.completed_at, _table.c.updated_at)
        statement = delete(_table).where(
            _table.c.status.in_(_ENDED), ended_at < before, ~browser_vm_left
        )
        async with self._writes.begin() as conn:
            result = await conn.execute(statement)
        return int(result.rowcount)
