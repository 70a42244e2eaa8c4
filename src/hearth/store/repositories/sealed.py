"""The secrets the vault sealed into rows, by kind (``SealedKind``): found under an older master
key, and each replaced by a compare-and-set, for ``hearth keys rotate-master``; counted by key
id, so that a controller missing its master key refuses to start instead of making a new one;
and found, or deleted with their rows, under a lost key, for ``hearth keys forget-master``."""

from __future__ import annotations

import builtins

from sqlalchemy import ColumnElement, Table, delete, func, select, update

from hearth.store.models import Base
from hearth.store.records import SEALED_KINDS, SealedKind, SealedValue
from hearth.store.repositories._base import Repository


class SealedRepo(Repository):
    """Reads and replaces sealed secrets of any kind."""

    async def not_under(self, kind: SealedKind, key_id: str) -> builtins.list[SealedValue]:
        """Every secret of ``kind`` sealed under a master key other than ``key_id``."""
        table = _table(kind)
        key, nonce, ciphertext = (table.c[name] for name in kind.columns)
        statement = select(table.c.id, key, nonce, ciphertext).where(
            key.is_not(None), nonce.is_not(None), ciphertext.is_not(None), key != key_id
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [SealedValue(row[0], row[1], row[2], row[3]) for row in rows]

    async def count_by_key(self) -> dict[str, dict[str, int]]:
        """How many secrets are sealed under each master key, by what they are (``credential``
        or a kind's ``bound_to``); kinds with none are left out."""
        sealed = [("credential", _CREDENTIALS, ("key_id", "nonce", "ciphertext"))]
        sealed += [(kind.bound_to, _table(kind), kind.columns) for kind in SEALED_KINDS]
        counts: dict[str, dict[str, int]] = {}
        async with self._engine.connect() as conn:
            for what, table, (key_column, _, ciphertext) in sealed:
                key = table.c[key_column]
                statement = (
                    select(key, func.count())
                    .where(key.is_not(None), table.c[ciphertext].is_not(None))
                    .group_by(key)
                )
                rows = (await conn.execute(statement)).all()
                if rows:
                    counts[what] = {row[0]: int(row[1]) for row in rows}
        return counts

    async def replace(self, kind: SealedKind, old: SealedValue, new: SealedValue) -> bool:
        """Put ``new`` in place of ``old`` if the row still holds ``old`` (else it changed
        meanwhile: its VM ended, a new secret was sealed); whether it was replaced."""
        table = _table(kind)
        key, nonce, ciphertext = (table.c[name] for name in kind.columns)
        statement = (
            update(table)
            .where(table.c.id == old.row_id, key == old.key_id, nonce == old.nonce)
            .values({key: new.key_id, nonce: new.nonce, ciphertext: new.ciphertext})
        )
        async with self._writes.begin() as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount == 1)

    async def under(
        self, kind: SealedKind, key_id: str, *, column: str = "id"
    ) -> builtins.list[str]:
        """``column`` (the row's id by default) of every row of ``kind`` with a secret sealed
        under master key ``key_id``, where it is set, in order."""
        table = _table(kind)
        key = table.c[kind.columns[0]]
        statement = select(table.c[column]).where(key == key_id, table.c[column].is_not(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement.order_by(table.c[column]))).all()
        return [str(row[0]) for row in rows]

    async def delete_credentials_under(self, key_id: str) -> builtins.list[str]:
        """Delete every credential document sealed under master key ``key_id``, in one
        statement; each as ``<user>/<provider>``, in order."""
        table = _CREDENTIALS
        gone = await self._delete(
            table, table.c.key_id == key_id, table.c.user_id, table.c.provider
        )
        return sorted(f"{user}/{provider}" for user, provider in gone)

    async def delete_rows_under(self, kind: SealedKind, key_id: str) -> builtins.list[str]:
        """Delete every row of ``kind`` whose secret is sealed under master key ``key_id``, in
        one statement (for kinds whose row is nothing without its secret: a workspace); the
        ids, in order."""
        table = _table(kind)
        gone = await self._delete(table, table.c[kind.columns[0]] == key_id, table.c.id)
        return sorted(str(row[0]) for row in gone)

    async def _delete(
        self, table: Table, where: ColumnElement[bool], *returned: ColumnElement[object]
    ) -> builtins.list[tuple[object, ...]]:
        async with self._writes.begin() as conn:
            rows = (await conn.execute(delete(table).where(where).returning(*returned))).all()
        return [tuple(row) for row in rows]


def _table(kind: SealedKind) -> Table:
    return Base.metadata.tables[kind.table]


_CREDENTIALS = Base.metadata.tables["credentials"]
