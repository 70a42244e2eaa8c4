"""API keys: generated or imported, stored only as HMAC-SHA256 under a server secret, checked on
every request.

The secret lives outside the database (``hearth.credentials.keys.load_key_hash_secret``), so a
copy of the database does not let anyone test guesses of a weak operator-chosen key offline.
Rows stored before that (scheme ``sha256``) keep working and are rehashed at their next use.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.errors import ConfigError, Conflict, InvalidInput
from hearth.store.models import api_keys_table
from hearth.store.records import ApiKeyRecord, utc_now
from hearth.store.repositories._base import (
    Clock,
    Repository,
    found,
    insert_ignoring_duplicates,
    to_record,
)
from hearth.store.repositories._status import after_in_order
from hearth.store.repositories.users import ensure_user

KEY_PREFIX = "hk_"
DISPLAY_PREFIX_CHARS = 8  # "hk_" and five random characters: enough to tell keys apart
IMPORTED_KEY_MIN_CHARS = 32
KEY_MAX_CHARS = 512
# Stamping last_used_at on every request would turn each authenticated read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

HMAC_SCHEME = "hmac-sha256"
LEGACY_SCHEME = "sha256"  # rows stored before revision 0003

_PUBLIC_COLUMNS = [c for c in api_keys_table.c if c.name not in ("key_hash", "key_hash_scheme")]
_table = api_keys_table


def hash_key(plaintext: str, secret: bytes) -> str:
    """The HMAC-SHA256 hex digest under which a key is stored."""
    return hmac.new(secret, plaintext.encode(), hashlib.sha256).hexdigest()


def legacy_hash_key(plaintext: str) -> str:
    """The bare sha256 hex digest rows stored before revision 0003 hold."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _oldest_first() -> Select[Any]:
    """Every key's public columns, oldest first (then by id: keys made in one instant)."""
    return select(*_PUBLIC_COLUMNS).order_by(_table.c.created_at, _table.c.id)


def _new_key_id() -> str:
    return f"key_{secrets.token_hex(8)}"


class ApiKeyRepo(Repository):
    """Creates, imports, authenticates, lists and revokes API keys.

    ``secret`` is the key-hash secret; a store opened without one can list and revoke keys but
    not mint, import or check them (ConfigError).
    """

    def __init__(
        self, engine: AsyncEngine, *, clock: Clock = utc_now, secret: bytes | None = None
    ) -> None:
        super().__init__(engine, clock=clock)
        self._secret = secret

    def _hash(self, plaintext: str) -> str:
        if self._secret is None:
            raise ConfigError("the store was opened without the API-key hash secret")
        return hash_key(plaintext, self._secret)

    async def _rehash_legacy(self, conn: AsyncConnection, plaintext: str) -> None:
        """Move a pre-0003 row of this key, if there is one, to the keyed hash."""
        await conn.execute(
            update(_table)
            .where(
                _table.c.key_hash == legacy_hash_key(plaintext),
                _table.c.key_hash_scheme == LEGACY_SCHEME,
            )
            .values(key_hash=self._hash(plaintext), key_hash_scheme=HMAC_SCHEME)
        )

    async def _row_of(self, conn: AsyncConnection, key_hash: str) -> Row[Any] | None:
        statement = select(*_PUBLIC_COLUMNS).where(
            _table.c.key_hash == key_hash, _table.c.key_hash_scheme == HMAC_SCHEME
        )
        return (await conn.execute(statement)).one_or_none()

    async def create(self, user_id: str, *, admin: bool) -> tuple[str, ApiKeyRecord]:
        """A new key for ``user_id`` (created if new): the plaintext, shown once, and its record."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        values = {
            "id": _new_key_id(),
            "user_id": user_id,
            "key_hash": self._hash(plaintext),
            "key_hash_scheme": HMAC_SCHEME,
            "prefix": plaintext[:DISPLAY_PREFIX_CHARS],
            "is_admin": admin,
            "created_at": now,
        }
        async with self._writes.begin() as conn:
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
        key_hash = self._hash(plaintext)
        now = self._clock()
        async with self._writes.begin() as conn:
            await ensure_user(conn, user_id, now=now)
            await self._rehash_legacy(conn, plaintext)
            insert = insert_ignoring_duplicates(conn, api_keys_table, key="key_hash")
            await conn.execute(
                insert.values(
                    id=_new_key_id(),
                    user_id=user_id,
                    key_hash=key_hash,
                    key_hash_scheme=HMAC_SCHEME,
                    prefix=plaintext[:DISPLAY_PREFIX_CHARS],
                    is_admin=admin,
                    created_at=now,
                )
            )
            row = await self._row_of(conn, key_hash)
        assert row is not None  # inserted, or already there
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
        key_hash = self._hash(plaintext)
        async with self._engine.connect() as conn:
            row = await self._row_of(conn, key_hash)
            if row is None:
                # Perhaps a key stored before the keyed hash (checked by a read first, so that
                # unknown keys never take the write lock).
                legacy = await conn.scalar(
                    select(_table.c.id).where(
                        _table.c.key_hash == legacy_hash_key(plaintext),
                        _table.c.key_hash_scheme == LEGACY_SCHEME,
                    )
                )
                if legacy is None:
                    return None
        if row is None:
            async with self._writes.begin() as conn:
                await self._rehash_legacy(conn, plaintext)
                row = await self._row_of(conn, key_hash)
        if row is None:
            return None
        record = to_record(ApiKeyRecord, row)
        if record.is_revoked:
            return None
        now = self._clock()
        stale_before = now - LAST_USED_RESOLUTION
        if record.last_used_at is not None and record.last_used_at > stale_before:
            return record
        async with self._writes.begin() as conn:
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
        row = await self._read_one(select(*_PUBLIC_COLUMNS).where(_table.c.id == key_id))
        return found(ApiKeyRecord, row, f"API key {key_id} does not exist")

    async def list(self, user_id: str | None = None) -> builtins.list[ApiKeyRecord]:
        """Every key (of ``user_id`` if given), revoked ones included, oldest first."""
        statement = _oldest_first()
        if user_id is not None:
            statement = statement.where(api_keys_table.c.user_id == user_id)
        return await self._read_records(ApiKeyRecord, statement)

    async def page_for(
        self, *, after: str | None, limit: int
    ) -> tuple[builtins.list[ApiKeyRecord], str | None]:
        """``list`` a page at a time, for the API: ``limit`` keys at most after key ``after``
        (a place in that order, revoked or not), and the ``after`` of the next page (None: this
        one is the last). InvalidInput when ``after`` names no key."""
        statement = _oldest_first().limit(limit + 1)
        if after is not None:
            if await self._read_one(select(_table.c.id).where(_table.c.id == after)) is None:
                raise InvalidInput(f"after: API key {after} does not exist")
            statement = statement.where(after_in_order(_table, after))
        records = await self._read_records(ApiKeyRecord, statement)
        return records[:limit], records[limit - 1].id if len(records) > limit else None

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Stop ``key_id`` from authenticating; revoking twice keeps the first revocation time."""
        async with self._writes.begin() as conn:
            await conn.execute(
                update(api_keys_table)
                .where(api_keys_table.c.id == key_id, api_keys_table.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = (
                await conn.execute(select(*_PUBLIC_COLUMNS).where(_table.c.id == key_id))
            ).one_or_none()
        return found(ApiKeyRecord, row, f"API key {key_id} does not exist")
