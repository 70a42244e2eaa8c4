"""Auth sessions: one row per login flow, moved through its statuses by compare-and-set."""

from __future__ import annotations

import builtins
from collections.abc import Collection
from typing import NoReturn

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from hearth.auth.states import TERMINAL, AuthStatus, check_auth_transition
from hearth.errors import ActiveSessionExists, Conflict, InvalidInput, NotFound
from hearth.store.models import ACTIVE_AUTH_STATUSES, auth_sessions_table, users_table
from hearth.store.records import AuthSessionRecord
from hearth.store.repositories._base import (
    Coerce,
    Repository,
    as_str,
    as_timestamp,
    check_fields,
    compare_and_set,
    enum_members,
    expected_statuses,
    optional,
    to_record,
    to_values,
)

# What ``update``/``transition`` may change; the rest is identity or kept by the repository.
UPDATABLE_FIELDS: dict[str, Coerce] = {
    "vm_id": optional(as_str),
    "browser_vm_id": optional(as_str),
    "login_url": optional(as_str),
    "view_token_hash": optional(as_str),
    "error_message": optional(as_str),
    "stage_deadline_at": optional(as_timestamp),
}

_table = auth_sessions_table


class AuthSessionRepo(Repository):
    """Persists auth sessions; at most one non-terminal session per user and provider."""

    async def insert(self, record: AuthSessionRecord) -> AuthSessionRecord:
        """Store a new session.

        Conflict if the id is taken, ActiveSessionExists (a Conflict) if the user already has an
        active session for the provider; NotFound if the user does not exist.
        """
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        _table.insert().values(to_values(record)).returning(*_table.c)
                    )
                ).one()
        except IntegrityError as exc:
            await self._explain_insert_failure(record, exc)
        return to_record(AuthSessionRecord, row)

    async def _explain_insert_failure(
        self, record: AuthSessionRecord, exc: IntegrityError
    ) -> NoReturn:
        # Diagnosed in a fresh transaction so the insert stays one write-first statement.
        async with self._engine.connect() as conn:
            user = await conn.scalar(
                select(users_table.c.id).where(users_table.c.id == record.user_id)
            )
            taken = await conn.scalar(select(_table.c.id).where(_table.c.id == record.id))
        if user is None:
            raise NotFound(f"user {record.user_id} does not exist") from exc
        if taken is not None:
            raise Conflict(f"auth session {record.id} already exists") from exc
        if record.status not in TERMINAL:
            # The one constraint left: one active session per user and provider. The session
            # that holds it may have ended since; the caller decides whether to try again.
            active = await self.find_active(record.user_id, record.provider)
            which = f" {active.id} ({active.status.value})" if active is not None else ""
            raise ActiveSessionExists(
                f"user {record.user_id} already has an active {record.provider} auth session{which}"
            ) from exc
        raise InvalidInput(f"auth session {record.id} violates a constraint of the store") from exc

    async def get(self, session_id: str) -> AuthSessionRecord:
        """The session ``session_id``; NotFound if there is none."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(_table).where(_table.c.id == session_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"auth session {session_id} does not exist")
        return to_record(AuthSessionRecord, row)

    async def list(
        self, *, user_id: str | None = None, statuses: Collection[AuthStatus] | None = None
    ) -> builtins.list[AuthSessionRecord]:
        """Sessions, oldest first, optionally only ``user_id``'s and only in ``statuses``."""
        statement = select(_table).order_by(_table.c.created_at, _table.c.id)
        if user_id is not None:
            statement = statement.where(_table.c.user_id == user_id)
        if statuses is not None:
            statement = statement.where(_table.c.status.in_(enum_members(AuthStatus, statuses)))
        async with self._engine.connect() as conn:
            rows = await conn.execute(statement)
        return [to_record(AuthSessionRecord, row) for row in rows]

    async def find_active(self, user_id: str, provider: str) -> AuthSessionRecord | None:
        """The user's session for ``provider`` that has not ended yet, if any."""
        statement = select(_table).where(
            _table.c.user_id == user_id,
            _table.c.provider == provider,
            _table.c.status.in_(ACTIVE_AUTH_STATUSES),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(statement)).one_or_none()
        return None if row is None else to_record(AuthSessionRecord, row)

    async def transition(
        self,
        session_id: str,
        expected: AuthStatus | Collection[AuthStatus],
        new: AuthStatus,
        **fields: object,
    ) -> AuthSessionRecord:
        """Move ``session_id`` from one of ``expected`` to ``new`` (and set ``fields``) atomically.

        Exactly one of several racing callers wins; the others get Conflict naming the status
        they found. A move the transition table forbids is a Conflict before the database is
        touched. Every move stamps ``updated_at``; entering a terminal status stamps
        ``completed_at``.
        """
        values = check_fields("auth session", UPDATABLE_FIELDS, fields)
        olds = expected_statuses(AuthStatus, expected)
        [new] = enum_members(AuthStatus, [new])
        for old in olds:
            check_auth_transition(session_id, old, new)
        now = self._clock()
        values.update(status=new, updated_at=now)
        if new in TERMINAL:
            values["completed_at"] = now
        async with self._engine.begin() as conn:
            row = await compare_and_set(
                conn, _table, what="auth session", row_id=session_id, expected=olds, values=values
            )
        return to_record(AuthSessionRecord, row)

    async def update(self, session_id: str, **fields: object) -> AuthSessionRecord:
        """Set non-status ``fields`` of ``session_id``; status changes only through transition."""
        if "status" in fields:
            raise InvalidInput("an auth session's status changes only through transition()")
        values = check_fields("auth session", UPDATABLE_FIELDS, fields)
        values["updated_at"] = self._clock()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    update(_table)
                    .where(_table.c.id == session_id)
                    .values(values)
                    .returning(*_table.c)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"auth session {session_id} does not exist")
        return to_record(AuthSessionRecord, row)
