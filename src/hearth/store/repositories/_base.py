"""What every repository shares: the engine, the clock, field checks and compare-and-set."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Executable, Row, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store.migrate import SQLITE_BEGIN_IMMEDIATE
from hearth.store.models import users_table
from hearth.store.records import utc_now

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Clock = Callable[[], datetime]
Coerce = Callable[[str, object], object]
R = TypeVar("R", bound="DataclassInstance")
E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


def run_to_completion(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``method`` such that a cancel of its caller lets the call finish, then propagates.

    A cancel that lands while a statement is in flight would make SQLAlchemy invalidate the
    connection, and an invalidated SQLite connection can keep its write lock until it is
    garbage collected: every other writer then waits out the busy timeout and fails with
    "database is locked". Store calls are short, so each one ends (committed or rolled back)
    before its caller sees the cancel; further cancels meanwhile are folded into that one.
    """

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> T:
        task = asyncio.ensure_future(method(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            while not task.done():
                try:
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    continue
            if not task.cancelled():
                task.exception()  # retrieved: the caller was cancelled, its result is moot
            raise

    return call


class Repository:
    """Base of the repositories: holds the engine and the clock that stamps times.

    Every public coroutine method of a subclass runs to completion even when its caller is
    cancelled (``run_to_completion``): no transaction is cut short by a cancel.

    Reads go through ``_engine.connect()``; every transaction that writes goes through
    ``_writes.begin()``, which on SQLite takes the write lock at ``BEGIN`` (``BEGIN
    IMMEDIATE``, waiting out the busy timeout for it). Begun deferred, a transaction that read
    first failed "database is locked" at once when another connection committed before its first
    write: SQLite cannot upgrade a read lock on an old snapshot, so it does not wait.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, attr in list(vars(cls).items()):
            if not name.startswith("_") and inspect.iscoroutinefunction(attr):
                setattr(cls, name, run_to_completion(attr))

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now) -> None:
        self._engine = engine
        self._writes = engine.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
        self._clock = clock

    async def _read_one(self, statement: Executable) -> Row[Any] | None:
        """The one row ``statement`` reads, or None."""
        async with self._engine.connect() as conn:
            return (await conn.execute(statement)).one_or_none()

    async def _write_one(self, statement: Executable) -> Row[Any] | None:
        """The one row ``statement`` writes (and returns), or None; committed."""
        async with self._writes.begin() as conn:
            return (await conn.execute(statement)).one_or_none()

    async def _read_records(self, cls: type[R], statement: Executable) -> list[R]:
        """Every row ``statement`` reads, as records of ``cls``."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(statement)
        return [to_record(cls, row) for row in rows]

    async def _insert_record(self, table: Table, record: R) -> R:
        """Insert ``record`` into ``table`` and read it back as stored (IntegrityError as is)."""
        row = await self._write_one(table.insert().values(to_values(record)).returning(*table.c))
        assert row is not None  # an INSERT ... RETURNING returns its row
        return to_record(type(record), row)

    async def _update_by_id(
        self, table: Table, row_id: str, values: Mapping[str, object]
    ) -> Row[Any] | None:
        """Set ``values`` on the row ``row_id`` of ``table``; the updated row, or None."""
        return await self._write_one(
            update(table).where(table.c.id == row_id).values(dict(values)).returning(*table.c)
        )

    async def _raise_if_user_missing(self, user_id: str, exc: IntegrityError) -> None:
        """NotFound (from ``exc``) if the user does not exist: a failed write explained."""
        # Diagnosed after the failed write, in a fresh transaction, so the write itself stays
        # a single statement that never reads before it writes.
        exists = await self._read_one(select(users_table.c.id).where(users_table.c.id == user_id))
        if exists is None:
            raise NotFound(f"user {user_id} does not exist") from exc

    async def _raise_if_id_taken(
        self, table: Table, row_id: str, *, what: str, exc: IntegrityError
    ) -> None:
        """Conflict (from ``exc``) if ``table`` already has a row ``row_id``."""
        taken = await self._read_one(select(table.c.id).where(table.c.id == row_id))
        if taken is not None:
            raise Conflict(f"{what} {row_id} already exists") from exc


def found(cls: type[R], row: Row[Any] | None, missing: str) -> R:
    """``row`` as a record of ``cls``; NotFound with the message ``missing`` if there is none."""
    if row is None:
        raise NotFound(missing)
    return to_record(cls, row)


def to_record(cls: type[R], row: Row[Any]) -> R:
    """Build a record from a row whose columns include every field of ``cls``."""
    mapping = row._mapping
    return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def to_values(record: DataclassInstance) -> dict[str, object]:
    """A record's fields as column values."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def insert_ignoring_duplicates(conn: AsyncConnection, table: Table, *, key: str) -> Any:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` for the connection's dialect."""
    return dialect_insert(conn, table).on_conflict_do_nothing(index_elements=[key])


def dialect_insert(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT into ``table`` in the connection's dialect, which can take ``ON CONFLICT``."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# Field coercion: callers hand ``**fields``; each allowed name maps to a checker that returns
# the value to store or raises InvalidInput, so bad input never reaches the driver.


def optional(coerce: Coerce) -> Coerce:
    """Allow None in addition to what ``coerce`` accepts."""

    def check(name: str, value: object) -> object:
        return None if value is None else coerce(name, value)

    return check


def _instance_of(kind: type, noun: str) -> Coerce:
    """A value of type ``kind`` (``noun`` names it in the error)."""

    def check(name: str, value: object) -> object:
        # bool is an int subclass, but a flag where a number belongs is a caller's mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidInput(f"{name} must be {noun}, got {type(value).__name__}")
        return value

    return check


as_str = _instance_of(str, "a string")
as_int = _instance_of(int, "an integer")  # booleans refused
as_bool = _instance_of(bool, "a boolean")
as_bytes = _instance_of(bytes, "bytes")


def as_float(name: str, value: object) -> object:
    """A number of seconds (an int is taken as a float; booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name}: must be a number")
    return float(value)


def as_path(name: str, value: object) -> object:
    """A filesystem path (str or PathLike)."""
    if not isinstance(value, str | os.PathLike):
        raise InvalidInput(f"{name} must be a path, got {type(value).__name__}")
    return Path(value)


def as_timestamp(name: str, value: object) -> object:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInput(f"{name} must be a timezone-aware datetime")
    return value


def as_enum(enum_cls: type[StrEnum]) -> Coerce:
    """A member (or value) of ``enum_cls``."""

    def check(name: str, value: object) -> object:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return enum_cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum_cls)
            raise InvalidInput(f"{name} must be one of {allowed}, got {value!r}") from None

    return check


def check_fields(
    what: str, rules: Mapping[str, Coerce], values: Mapping[str, object]
) -> dict[str, object]:
    """Validate ``values`` against ``rules``; unknown names raise InvalidInput naming them."""
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise InvalidInput(f"{what} has no updatable field {', '.join(unknown)}")
    return {name: rules[name](name, value) for name, value in values.items()}


def enum_members(enum_cls: type[E], values: Iterable[str]) -> tuple[E, ...]:
    """``values`` as members of ``enum_cls``, duplicates dropped; InvalidInput for strangers."""
    try:
        return tuple(dict.fromkeys(enum_cls(value) for value in values))
    except ValueError as exc:
        raise InvalidInput(f"not a {enum_cls.__name__}: {exc}") from None


def expected_statuses(enum_cls: type[E], expected: E | Collection[E]) -> tuple[E, ...]:
    """The expected statuses of a compare-and-set as a non-empty tuple of members."""
    # A lone status is a str, which is itself a collection (of characters).
    statuses = enum_members(enum_cls, [expected] if isinstance(expected, str) else expected)
    if not statuses:
        raise InvalidInput("a transition needs at least one expected status")
    return statuses


async def compare_and_set(
    conn: AsyncConnection,
    table: Table,
    *,
    what: str,
    row_id: str,
    expected: tuple[StrEnum, ...],
    values: Mapping[str, object],
) -> Row[Any]:
    """One ``UPDATE ... WHERE id = ? AND status IN (...)``; the updated row, or why not.

    Raises NotFound when no row has the id, Conflict (naming the current status) when the row
    is not in an expected status: another actor moved it first.
    """
    statement = (
        update(table)
        .where(table.c.id == row_id, table.c.status.in_(expected))
        .values(dict(values))
        .returning(*table.c)
    )
    row = (await conn.execute(statement)).one_or_none()
    if row is not None:
        return row
    current = (
        await conn.execute(select(table.c.status).where(table.c.id == row_id))
    ).scalar_one_or_none()
    if current is None:
        raise NotFound(f"{what} {row_id} does not exist")
    wanted = " or ".join(s.value for s in expected)
    raise Conflict(f"{what} {row_id} is {current.value}, not {wanted}")
