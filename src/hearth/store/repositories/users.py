"""Users: created on first sight, never duplicated."""

from __future__ import annotations

import builtins
import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.errors import InvalidInput
from hearth.store.models import USER_ID_MAX, users_table
from hearth.store.records import UserRecord
from hearth.store.repositories._base import (
    Repository,
    found,
    insert_ignoring_duplicates,
    to_record,
)

# What a new user id may look like: what the API's paths and bodies can carry as it is.
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
POOL_USER = "hearth-pool"  # the owner of pooled VMs' rows until one is handed out: nobody's id


def check_new_user_id(user_id: str) -> str:
    """``user_id`` if a key or VM may be made for it, else InvalidInput: ``check_user_id``, the
    API's pattern (``hearth keys create`` took ids the API could not address), and not the
    warm pool's owner (its VMs would count against that user's limits)."""
    check_user_id(user_id)
    if re.fullmatch(USER_ID_PATTERN, user_id) is None:
        raise InvalidInput(
            f"user id {user_id!r} must start with a letter or digit and hold only letters, "
            "digits and ._@-"
        )
    if user_id == POOL_USER:
        raise InvalidInput(f"user id {POOL_USER!r} is reserved for the warm pool's VMs")
    return user_id


def check_user_id(user_id: str) -> str:
    """Return ``user_id`` if it is a usable identifier, else raise InvalidInput."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput("user id must be a non-empty string")
    if len(user_id) > USER_ID_MAX:
        raise InvalidInput(f"user id must be at most {USER_ID_MAX} characters")
    if not user_id.isprintable():
        raise InvalidInput("user id must not contain control characters")
    return user_id


async def ensure_user(conn: AsyncConnection, user_id: str, *, now: datetime) -> UserRecord:
    """Insert the user unless present (one statement, so racing callers agree), then read it."""
    check_user_id(user_id)
    insert = insert_ignoring_duplicates(conn, users_table, key="id")
    await conn.execute(insert.values(id=user_id, created_at=now))
    row = (await conn.execute(select(users_table).where(users_table.c.id == user_id))).one()
    return to_record(UserRecord, row)


class UserRepo(Repository):
    """Reads and idempotently creates users."""

    async def ensure(self, user_id: str) -> UserRecord:
        """The user ``user_id``, created if new; safe when many callers race to create it."""
        async with self._writes.begin() as conn:
            return await ensure_user(conn, user_id, now=self._clock())

    async def get(self, user_id: str) -> UserRecord:
        """The user ``user_id``; NotFound if there is none."""
        row = await self._read_one(select(users_table).where(users_table.c.id == user_id))
        return found(UserRecord, row, f"user {user_id} does not exist")

    async def list(self) -> builtins.list[UserRecord]:
        """Every user, oldest first."""
        statement = select(users_table).order_by(users_table.c.created_at, users_table.c.id)
        return await self._read_records(UserRecord, statement)
