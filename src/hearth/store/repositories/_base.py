"""What every repository shares: the engine, the clock, field checks and compare-and-set."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Row, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store.records import utc_now

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Clock = Callable[[], datetime]
Coerce = Callable[[str, object], object]
R = TypeVar("R", bound="DataclassInstance")
E = TypeVar("E", bound=StrEnum)


class Repository:
    """Base of the repositories: holds the engine and the clock that stamps times."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now) -> None:
        self._engine = engine
        self._clock = clock


def to_record(cls: type[R], row: Row[Any]) -> R:
    """Build a record from a row whose columns include every field of ``cls``."""
    mapping = row._mapping
    return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def to_values(record: DataclassInstance) -> dict[str, object]:
    """A record's fields as column values."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def insert_ignoring_duplicates(conn: AsyncConnection, table: Table, *, key: str) -> Any:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])


# Field coercion: callers hand ``**fields``; each allowed name maps to a checker that returns
# the value to store or raises InvalidInput, so bad input never reaches the driver.


def optional(coerce: Coerce) -> Coerce:
    """Allow None in addition to what ``coerce`` accepts."""

    def check(name: str, value: object) -> object:
        return None if value is None else coerce(name, value)

    return check


def as_str(name: str, value: object) -> object:
    """A string."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    return value


def as_int(name: str, value: object) -> object:
    """An integer (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {type(value).__name__}")
    return value


def as_bool(name: str, value: object) -> object:
    """A boolean."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be a boolean, got {type(value).__name__}")
    return value


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
