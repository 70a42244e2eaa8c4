"""Credentials: one sealed document per user and provider, replaced whole, never merged."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store.models import credentials_table
from hearth.store.records import CredentialRecord
from hearth.store.repositories._base import Repository, dialect_insert, to_record, to_values

_table = credentials_table
_CONFLICT_KEY = ["user_id", "provider"]
# Set on insert and kept when a newer document replaces the row: the slot's identity.
_IDENTITY = frozenset({"id", "user_id", "provider", "created_at"})


class CredentialRepo(Repository):
    """Persists sealed credential documents; at most one per user and provider.

    The store stamps ``created_at`` (on first insert) and ``updated_at`` (whenever the document
    changes) from its clock; the values on a record handed in are ignored.
    """

    async def put(self, record: CredentialRecord) -> CredentialRecord:
        """Store ``record`` as the user's document for its provider, replacing any earlier one.

        A replacement keeps the row's id and ``created_at`` and takes every other field from
        ``record`` (so a new capture starts undelivered). NotFound if the user does not exist.
        """
        try:
            async with self._writes.begin() as conn:
                stored = await self.put_on(conn, record)
        except IntegrityError as exc:
            await self._explain_write_failure(record, exc)
        return stored

    async def put_on(self, conn: AsyncConnection, record: CredentialRecord) -> CredentialRecord:
        """``put`` on a connection whose transaction the caller holds (a login's capture is
        written with its session's move, or not at all)."""
        statement = dialect_insert(conn, _table).values(self._values(record))
        statement = statement.on_conflict_do_update(
            index_elements=_CONFLICT_KEY, set_=self._replacement(statement)
        ).returning(*_table.c)
        return to_record(CredentialRecord, (await conn.execute(statement)).one())

    async def replace_if_newer(
        self, record: CredentialRecord, *, delivered_at: datetime, newer_than: datetime
    ) -> bool:
        """Put ``record``, read back from the VM ``record.delivered_to_vm_id``, in place of the
        stored document if that is still the one delivered there at ``delivered_at`` and it
        expires before ``newer_than``.

        Used when a CLI VM hands back a document its CLI refreshed: ``delivered_at`` is the
        delivery the caller saw stamped on the row before it asked the VM, ``newer_than`` the
        handed-back document's expiry (an unknown stored expiry counts as earlier). An update
        in one statement, never an insert: a credential deleted meanwhile stays deleted; one
        captured meanwhile (a fresh login's is kept as it is) or delivered again stays; and
        between racing pull-backs of that delivery the later expiry wins. The row keeps its
        delivery (VM and ``delivered_at``). Returns whether ``record`` was stored.
        """
        vm_id = record.delivered_to_vm_id
        if not vm_id:
            raise InvalidInput("a pulled-back document must name the VM it came from")
        for name, value in (("delivered_at", delivered_at), ("newer_than", newer_than)):
            if value.utcoffset() is None:
                raise InvalidInput(f"{name} must be a timezone-aware datetime")
        kept = _IDENTITY | {"delivered_to_vm_id", "delivered_at"}
        values = {k: v for k, v in self._values(record).items() if k not in kept}
        statement = (
            update(_table)
            .where(
                _table.c.user_id == record.user_id,
                _table.c.provider == record.provider,
                _table.c.delivered_to_vm_id == vm_id,
                _table.c.delivered_at == delivered_at,
                or_(_table.c.expires_at.is_(None), _table.c.expires_at < newer_than),
            )
            .values(**values)
            .returning(_table.c.id)
        )
        return await self._write_one(statement) is not None

    async def get(self, user_id: str, provider: str) -> CredentialRecord | None:
        """The user's document for ``provider``, or None if there is none."""
        statement = select(_table).where(_table.c.user_id == user_id, _table.c.provider == provider)
        row = await self._read_one(statement)
        return None if row is None else to_record(CredentialRecord, row)

    async def list(self, user_id: str) -> builtins.list[CredentialRecord]:
        """The user's documents, ordered by provider."""
        statement = select(_table).where(_table.c.user_id == user_id).order_by(_table.c.provider)
        return await self._read_records(CredentialRecord, statement)

    async def all(self) -> builtins.list[CredentialRecord]:
        """Every stored document, ordered by user and provider (master-key rotation walks it)."""
        statement = select(_table).order_by(_table.c.user_id, _table.c.provider)
        return await self._read_records(CredentialRecord, statement)

    async def mark_delivered(
        self, user_id: str, provider: str, vm_id: str, *, sha256: str | None = None
    ) -> CredentialRecord:
        """Record that the document was written into VM ``vm_id`` (stamps ``delivered_at``).

        With ``sha256``, only if the stored document is still that one: a capture that
        replaced it meanwhile makes this a Conflict, so a stale delivery is never credited to
        the new document. NotFound if the user has no document for ``provider``.
        """
        if not isinstance(vm_id, str) or not vm_id:
            raise InvalidInput("vm_id must be a non-empty string")
        where = [_table.c.user_id == user_id, _table.c.provider == provider]
        if sha256 is not None:
            where.append(_table.c.sha256 == sha256)
        statement = (
            update(_table)
            .where(*where)
            .values(delivered_to_vm_id=vm_id, delivered_at=self._clock())
            .returning(*_table.c)
        )
        row = await self._write_one(statement)
        if row is not None:
            return to_record(CredentialRecord, row)
        if await self.get(user_id, provider) is None:
            raise NotFound(f"user {user_id} has no {provider} credentials")
        raise Conflict(
            f"the {provider} credentials of user {user_id} changed before delivery to "
            f"{vm_id} was recorded"
        )

    async def mark_withdrawn(self, user_id: str, provider: str, vm_id: str, *, sha256: str) -> bool:
        """Record that the document ``sha256`` was taken out of VM ``vm_id`` again: the row no
        longer names a VM, if it still named that one for that document (a compare-and-set);
        whether it changed."""
        held_there = _table.c.delivered_to_vm_id == vm_id
        return await self._mark(
            user_id, provider, sha256, held_there, delivered_to_vm_id=None, delivered_at=None
        )

    async def mark_expiry_told(
        self, user_id: str, provider: str, *, sha256: str, told: str
    ) -> bool:
        """Record that ``told`` (an expiry event) went out for the document ``sha256``; False
        when it already had, or the document changed meanwhile (so the event is told once per
        document, whichever controller gets here first)."""
        unset = or_(_table.c.expiry_told.is_(None), _table.c.expiry_told != told)
        return await self._mark(user_id, provider, sha256, unset, expiry_told=told)

    async def mark_needs_login(self, user_id: str, provider: str, *, sha256: str) -> bool:
        """Record that the provider refused to refresh the document ``sha256``; False when that
        was recorded already or the document changed meanwhile (a new login's wins)."""
        unset = _table.c.needs_login.is_(False)
        return await self._mark(user_id, provider, sha256, unset, needs_login=True)

    async def _mark(
        self, user_id: str, provider: str, sha256: str, unset: Any, **values: object
    ) -> bool:
        """Set ``values`` on the document ``sha256`` where ``unset`` holds (a compare-and-set);
        whether it changed."""
        statement = (
            update(_table)
            .where(
                _table.c.user_id == user_id,
                _table.c.provider == provider,
                _table.c.sha256 == sha256,
                unset,
            )
            .values(**values)
            .returning(_table.c.id)
        )
        return await self._write_one(statement) is not None

    async def reseal(
        self, record: CredentialRecord, *, key_id: str, nonce: bytes, ciphertext: bytes
    ) -> CredentialRecord | None:
        """Swap the sealed bytes of ``record`` for the same document sealed under ``key_id``.

        A compare-and-set on the row's id, key id and nonce (fresh for every sealing): if the
        document was replaced or resealed since ``record`` was read, nothing changes and None
        is returned. ``updated_at`` stays, since the document itself did not change.
        """
        statement = (
            update(_table)
            .where(
                _table.c.id == record.id,
                _table.c.key_id == record.key_id,
                _table.c.nonce == record.nonce,
            )
            .values(key_id=key_id, nonce=nonce, ciphertext=ciphertext)
            .returning(*_table.c)
        )
        row = await self._write_one(statement)
        return None if row is None else to_record(CredentialRecord, row)

    async def delete(self, user_id: str, provider: str) -> bool:
        """Remove the user's document for ``provider``; return whether there was one."""
        statement = (
            delete(_table)
            .where(_table.c.user_id == user_id, _table.c.provider == provider)
            .returning(_table.c.id)
        )
        return await self._write_one(statement) is not None

    def _values(self, record: CredentialRecord) -> dict[str, object]:
        now = self._clock()
        values = to_values(record)
        values.update(created_at=now, updated_at=now)
        return values

    @staticmethod
    def _replacement(statement: Any) -> dict[str, object]:
        """``SET column = excluded.column`` for everything but the slot's identity."""
        return {
            column.name: statement.excluded[column.name]
            for column in _table.c
            if column.name not in _IDENTITY
        }

    async def _explain_write_failure(
        self, record: CredentialRecord, exc: IntegrityError
    ) -> NoReturn:
        # The provider was checked up front, so the owner's foreign key is what is left to
        # violate.
        await self._raise_if_user_missing(record.user_id, exc)
        raise InvalidInput(
            f"the {record.provider} credentials of user {record.user_id} violate a constraint "
            "of the store"
        ) from exc
