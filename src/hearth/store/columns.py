"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy import DateTime, Dialect, Enum, Text, TypeDecorator

ENUM_LENGTH = 32


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the offset itself (``timestamptz``); SQLite stores text without one, so
    values are normalised to UTC on the way in and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store everything else as UTC."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored; use UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime whatever the backend handed back."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class MessageText(TypeDecorator[str]):
    """Text that may carry words from outside Hearth's control (a guest's console, an agent's or
    a CLI's answer, a receiver's error): a NUL, which PostgreSQL's text cannot hold (the whole
    row's write failed), is kept as U+FFFD on every backend."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        """The text with each NUL replaced."""
        return None if value is None else value.replace("\x00", "\ufffd")


class PathText(TypeDecorator[Path]):
    """A filesystem path kept as text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Path | str | None, dialect: Dialect) -> str | None:
        """Store the path's string form."""
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Path | None:
        """Give back a ``Path``."""
        return None if value is None else Path(value)


def enum_values(enum_cls: type[StrEnum]) -> list[str]:
    """The string values of a StrEnum, in declaration order."""
    return [member.value for member in enum_cls]


def str_enum(enum_cls: type[StrEnum], *, name: str) -> Enum:
    """A VARCHAR column holding the enum's values, CHECK-constrained to exactly those values.

    ``name`` names the CHECK constraint (a naming-convention token in the models, a final name
    wrapped in ``op.f`` in migrations).
    """
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        values_callable=enum_values,
        length=ENUM_LENGTH,
        validate_strings=True,
    )
