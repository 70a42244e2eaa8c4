"""The secrets the vault sealed into rows, by kind (``SealedKind``): found under an older master
key, and each replaced by a compare-and-set, for ``hearth keys rotate-master``."""

from __future__ import annotations

import builtins

from sqlalchemy import Table, select, update

from hearth.store.models import Base
from hearth.store.records import SealedKind, SealedValue
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


def _table(kind: SealedKind) -> Table:
    return Base.metadata.tables[kind.table]
