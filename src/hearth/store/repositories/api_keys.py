"""API keys: generated or imported, stored only as sha256, checked on every request."""

from __future__ import annotations

import builtins
import hashlib
import secrets
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import or_, select, update

from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store.models import api_keys_table
from hearth.store.records import ApiKeyRecord
from hearth.store.repositories._base import Repository, insert_ignoring_duplicates, to_record
from hearth.store.repositories.users import ensure_user

KEY_PREFIX = "hk_"
DISPLAY_PREFIX_CHARS = 8  # "hk_" and five random characters: enough to tell keys apart
IMPORTED_KEY_MIN_CHARS = 32
KEY_MAX_CHARS = 512
# Stamping last_used_at on every request would turn each authenticated read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

_PUBLIC_COLUMNS = [c for c in api_keys_table.c if c.name != "key_hash"]


def hash_key(plaintext: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _new_key_id() -> str:
    return f"key_{secrets.token_hex(8)}"


class ApiKeyRepo(Repository):
    """Creates, imports, authenticates, lists and revokes API keys."""

    async def create(self, user_id: str, *, admin: bool) -> tuple[str, ApiKeyRecord]:
        """A new key for ``user_id`` (created if new): the plaintext, shown once, and its record."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        values = {
            "id": _new_key_id(),
            "user_id": user_id,
            "key_hash": hash_key(plaintext),
            "prefix": plaintext[:DISPLAY_PREFIX_CHARS],
            "is_admin": admin,
            "created_at": now,
        }
        async with self._engine.begin() as conn:
            await ensure_user(conn, user_id, now=now)
            row = (
                await conn.execute(
                    api_keys_table.insert().values(values).returning(*_PUBLIC_COLUMNS)
                )
            ).one()
        return plaintext, to_record(ApiKeyRecord, row)

    async def import_key(self, plaintext: str, *, user_id: str, admin: bool) -> ApiKeyRecord:
        """Store an operator-supplied key; importing the same key again returns the same record.

        A key that was revoked stays revoked: re-importing never brings a key back. Importing
        a known key for a different user or admin flag is a Conflict.
        """
        if not (IMPORTED_KEY_MIN_CHARS <= len(plaintext) <= KEY_MAX_CHARS):
            raise InvalidInput(
                f"an imported key must have {IMPORTED_KEY_MIN_CHARS} to {KEY_MAX_CHARS} characters"
            )
        if not plaintext.isascii() or not plaintext.isprintable() or " " in plaintext:
            raise InvalidInput("an imported key must be printable ASCII without spaces")
        key_hash = hash_key(plaintext)
        now = self._clock()
        async with self._engine.begin() as conn:
            await ensure_user(conn, user_id, now=now)
            insert = insert_ignoring_duplicates(conn, api_keys_table, key="key_hash")
            await conn.execute(
                insert.values(
                    id=_new_key_id(),
                    user_id=user_id,
                    key_hash=key_hash,
                    prefix=plaintext[:DISPLAY_PREFIX_CHARS],
                    is_admin=admin,
                    created_at=now,
                )
            )
            row = (
                await conn.execute(
                    select(*_PUBLIC_COLUMNS).where(api_keys_table.c.key_hash == key_hash)
                )
            ).one()
        record = to_record(ApiKeyRecord, row)
        if record.user_id != user_id or record.is_admin != admin:
            raise Conflict(
                f"key {record.id} is already stored for user {record.user_id} "
                f"with admin={record.is_admin}"
            )
        return record

    async def authenticate(self, plaintext: str) -> ApiKeyRecord | None:
        """The unrevoked key whose plaintext this is, or None; notes when it was last used."""
        if not plaintext or len(plaintext) > KEY_MAX_CHARS:
            return None
        key_hash = hash_key(plaintext)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*_PUBLIC_COLUMNS).where(
                        api_keys_table.c.key_hash == key_hash,
                        api_keys_table.c.revoked_at.is_(None),
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        record = to_record(ApiKeyRecord, row)
        now = self._clock()
        stale_before = now - LAST_USED_RESOLUTION
        if record.last_used_at is not None and record.last_used_at > stale_before:
            return record
        async with self._engine.begin() as conn:
            # The guard makes concurrent requests stamp the key once, not once each.
            await conn.execute(
                update(api_keys_table)
                .where(
                    api_keys_table.c.id == record.id,
                    or_(
                        api_keys_table.c.last_used_at.is_(None),
                        api_keys_table.c.last_used_at <= stale_before,
                    ),
                )
                .values(last_used_at=now)
            )
        return replace(record, last_used_at=now)

    async def get(self, key_id: str) -> ApiKeyRecord:
        """The key ``key_id``; NotFound if there is none."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(*_PUBLIC_COLUMNS).where(api_keys_table.c.id == key_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"API key {key_id} does not exist")
        return to_record(ApiKeyRecord, row)

    async def list(self, user_id: str | None = None) -> builtins.list[ApiKeyRecord]:
        """Every key (of ``user_id`` if given), revoked ones included, oldest first."""
        statement = select(*_PUBLIC_COLUMNS).order_by(
            api_keys_table.c.created_at, api_keys_table.c.id
        )
        if user_id is not None:
            statement = statement.where(api_keys_table.c.user_id == user_id)
        async with self._engine.connect() as conn:
            rows = await conn.execute(statement)
        return [to_record(ApiKeyRecord, row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Stop ``key_id`` from authenticating; revoking twice keeps the first revocation time."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(api_keys_table)
                .where(api_keys_table.c.id == key_id, api_keys_table.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = (
                await conn.execute(select(*_PUBLIC_COLUMNS).where(api_keys_table.c.id == key_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"API key {key_id} does not exist")
        return to_record(ApiKeyRecord, row)
