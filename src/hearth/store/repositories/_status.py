"""Status tables: rows keyed by ``id`` whose status moves only by compare-and-set."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Collection, Mapping
from enum import StrEnum
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, Table, and_, or_, select
from sqlalchemy import update as update_statement
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.errors import Conflict, HearthError, InvalidInput, NotFound
from hearth.store.repositories._base import (
    Coerce,
    Repository,
    check_fields,
    compare_and_set,
    enum_members,
    expected_statuses,
    found,
    to_record,
)

S = TypeVar("S", bound=StrEnum)


class StatusRecord(Protocol):
    """What every status table's record has: an id, an owner (and, being a dataclass, fields)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


R = TypeVar("R", bound=StatusRecord)


class StatusRepository(Repository, Generic[R, S]):
    """Reads, updates and moves the rows of one status table (VMs, auth sessions).

    A subclass names, in its class line, its table, record type, status enum, the noun its
    messages use, the fields ``update``/``transition`` may set, its transition table's check
    (whose refusal becomes a Conflict) and ``stamps``: the timestamp column that entering a
    status sets to now, unless the caller set it.
    """

    _table: Table
    _record_type: type[R]
    _status_type: type[S]
    _what: str
    _updatable: Mapping[str, Coerce]
    _check: Callable[[str, S, S], None]
    _stamps: Mapping[S, str]

    def __init_subclass__(
        cls,
        *,
        table: Table,
        record: type[R],
        status: type[S],
        what: str,
        updatable: Mapping[str, Coerce],
        check: Callable[[str, S, S], None],
        stamps: Mapping[S, str],
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls._table, cls._record_type, cls._status_type = table, record, status
        cls._what, cls._updatable, cls._check = what, updatable, staticmethod(check)
        cls._stamps = stamps

    def _check_move(self, row_id: str, old: S, new: S) -> None:
        """Conflict if the transition table forbids moving ``row_id`` from ``old`` to ``new``."""
        try:
            self._check(row_id, old, new)
        except Conflict:
            raise
        except HearthError as exc:
            raise Conflict(exc.message) from exc

    async def _explain_other_failure(self, record: R, exc: IntegrityError) -> None:
        """Raise the error for a refused insert that is neither a missing user nor a taken id
        (a table's own constraints); returning gives the generic InvalidInput."""

    async def insert(self, record: R) -> R:
        """Store a new row: NotFound if its user does not exist, Conflict if its id is taken,
        else whatever the table's own constraints say (``_explain_other_failure``)."""
        try:
            return await self._insert_record(self._table, record)
        except IntegrityError as exc:
            await self._raise_if_user_missing(record.user_id, exc)
            await self._raise_if_id_taken(self._table, record.id, what=self._what, exc=exc)
            await self._explain_other_failure(record, exc)
            raise InvalidInput(
                f"{self._what} {record.id} violates a constraint of the store"
            ) from exc

    async def get(self, row_id: str) -> R:
        """The row ``row_id``; NotFound if there is none."""
        row = await self._read_one(select(self._table).where(self._table.c.id == row_id))
        return found(self._record_type, row, f"{self._what} {row_id} does not exist")

    async def list(
        self, *, user_id: str | None = None, statuses: Collection[S] | None = None
    ) -> builtins.list[R]:
        """Every row, oldest first, optionally only ``user_id``'s and only in ``statuses``."""
        return await self._page(user_id, statuses, None, None, paged=False)

    async def page(
        self,
        *,
        user_id: str | None = None,
        statuses: Collection[S] | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[R]:
        """``list`` for callers who page (the API's listings: only the rows ``_paged`` lets
        through), a page at a time: the rows after row ``after`` in that order (a place in it,
        whatever that row's status or owner now), ``limit`` of them at most."""
        return await self._page(user_id, statuses, after, limit, paged=True)

    async def _page(
        self,
        user_id: str | None,
        statuses: Collection[S] | None,
        after: str | None,
        limit: int | None,
        *,
        paged: bool,
    ) -> builtins.list[R]:
        table = self._table
        statement = select(table).order_by(table.c.created_at, table.c.id).limit(limit)
        if paged:
            statement = statement.where(*self._paged())
        if user_id is not None:
            statement = statement.where(table.c.user_id == user_id)
        if statuses is not None:
            wanted = enum_members(self._status_type, statuses)
            statement = statement.where(table.c.status.in_(wanted))
        if after is not None:
            statement = statement.where(after_in_order(table, after))
        return await self._read_records(self._record_type, statement)

    def _paged(self) -> builtins.list[ColumnElement[bool]]:
        """What every row ``page`` lists meets (nothing: every row; ``list`` reads them all)."""
        return []

    async def page_for(
        self,
        *,
        user_id: str | None,
        statuses: Collection[S] | None = None,
        after: str | None,
        limit: int,
    ) -> tuple[builtins.list[R], str | None]:
        """``page`` for an API's caller (``user_id``; None: an admin, who sees everybody's):
        ``limit`` rows at most, and the ``after`` of the next page (None: this one is the
        last). InvalidInput when ``after`` names no row the caller could have listed."""
        if after is not None:
            table = self._table
            named = select(table.c.id).where(table.c.id == after)
            if user_id is not None:
                named = named.where(table.c.user_id == user_id)
            if await self._read_one(named) is None:
                raise InvalidInput(f"after: {self._what} {after} does not exist")
        rows = await self.page(user_id=user_id, statuses=statuses, after=after, limit=limit + 1)
        return rows[:limit], rows[limit - 1].id if len(rows) > limit else None

    async def transition(
        self, row_id: str, expected: S | Collection[S], new: S, **fields: object
    ) -> R:
        """Move ``row_id`` from one of ``expected`` to ``new`` (and set ``fields``) atomically.

        Exactly one of several racing callers wins; the others get Conflict naming the status
        they found. A move the transition table forbids is a Conflict too, raised before the
        database is touched. Every move stamps ``updated_at``, and entering a status in
        ``stamps`` its column too.
        """
        return await self.transition_with(None, row_id, expected, new, **fields)

    async def transition_with(
        self,
        then: Callable[[AsyncConnection], Awaitable[object]] | None,
        row_id: str,
        expected: S | Collection[S],
        new: S,
        /,
        **fields: object,
    ) -> R:
        """``transition``, with ``then`` written in its transaction once the move has won: both
        land or neither does (a subclass's own ``transition`` is not run)."""
        values = check_fields(self._what, self._updatable, fields)
        olds = expected_statuses(self._status_type, expected)
        [new] = enum_members(self._status_type, [new])
        for old in olds:
            self._check_move(row_id, old, new)
        now = self._clock()
        if new in self._stamps:
            values.setdefault(self._stamps[new], now)
        values.update(status=new, updated_at=now)
        try:
            async with self._writes.begin() as conn:
                row = await compare_and_set(
                    conn, self._table, what=self._what, row_id=row_id, expected=olds, values=values
                )
                if then is not None:
                    await then(conn)
        except IntegrityError as exc:
            _raise_if_owner_unknown(values, exc)
            raise
        return to_record(self._record_type, row)

    async def update(self, row_id: str, **fields: object) -> R:
        """Set non-status ``fields`` of ``row_id``; the status changes only through transition."""
        values = self._settable(fields)
        try:
            row = await self._update_by_id(self._table, row_id, values)
        except IntegrityError as exc:
            _raise_if_owner_unknown(values, exc)
            raise
        return found(self._record_type, row, f"{self._what} {row_id} does not exist")

    async def update_if(
        self, row_id: str, expected: Mapping[str, object], /, **fields: object
    ) -> R | None:
        """``update`` by compare-and-set on other fields than the status: set ``fields`` of
        ``row_id`` in one statement only while each field in ``expected`` still holds its value
        there; None when one of them changed meanwhile (read again and decide again). NotFound
        when there is no such row."""
        values = self._settable(fields)
        held = check_fields(self._what, self._updatable, expected)
        table = self._table
        statement = (
            update_statement(table)
            .where(
                table.c.id == row_id,
                *(table.c[name].is_not_distinct_from(value) for name, value in held.items()),
            )
            .values(values)
            .returning(*table.c)
        )
        row = await self._write_one(statement)
        if row is None:
            await self.get(row_id)  # NotFound when it is gone; else a field changed
            return None
        return to_record(self._record_type, row)

    def _settable(self, fields: Mapping[str, object]) -> dict[str, object]:
        """``fields`` checked for ``update``, with ``updated_at`` stamped."""
        if "status" in fields:
            raise InvalidInput(f"{self._what} status changes only through transition()")
        values = check_fields(self._what, self._updatable, fields)
        values["updated_at"] = self._clock()
        return values


def after_in_order(table: Table, after: str) -> ColumnElement[bool]:
    """The rows of ``table`` after row ``after`` in the order of creation (then id): keyset
    paging, so a row made or ended between two pages moves no other one across them."""
    since = select(table.c.created_at).where(table.c.id == after).scalar_subquery()
    return or_(table.c.created_at > since, and_(table.c.created_at == since, table.c.id > after))


def _raise_if_owner_unknown(values: dict[str, object], exc: IntegrityError) -> None:
    # Checked values leave only the owner's foreign key to violate.
    if "user_id" in values:
        raise NotFound(f"user {values['user_id']} does not exist") from exc
