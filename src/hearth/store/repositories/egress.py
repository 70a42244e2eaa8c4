"""CLI VMs' egress paths: one row per VM with a way out, written whenever its policy changes."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import Row, delete, select

from hearth.store.models import vm_egress_table
from hearth.store.records import EgressRecord
from hearth.store.repositories._base import Repository, dialect_insert
from hearth_agent.wire import Provider

_table = vm_egress_table


class EgressRepo(Repository):
    """Persists each CLI VM's egress port and policy (the lists as JSON)."""

    async def put(self, record: EgressRecord) -> None:
        """Store ``record`` as the VM's path, replacing any earlier one."""
        values = {
            "vm_id": record.vm_id,
            "port": record.port,
            "providers": json.dumps(sorted(p.value for p in record.providers)),
            "allow_out": json.dumps(list(record.allow_out)),
            "deny_out": json.dumps(list(record.deny_out)),
            "updated_at": self._clock(),
        }
        async with self._writes.begin() as conn:
            statement = dialect_insert(conn, _table).values(values)
            replace = {name: statement.excluded[name] for name in values if name != "vm_id"}
            await conn.execute(
                statement.on_conflict_do_update(index_elements=["vm_id"], set_=replace)
            )

    async def get(self, vm_id: str) -> EgressRecord | None:
        """The VM's stored path, or None."""
        row = await self._read_one(select(_table).where(_table.c.vm_id == vm_id))
        return None if row is None else _record(row)

    async def delete(self, vm_id: str) -> None:
        """Forget the VM's path (it was closed)."""
        async with self._writes.begin() as conn:
            await conn.execute(delete(_table).where(_table.c.vm_id == vm_id))

    async def delete_except(self, keep: Collection[str]) -> int:
        """Forget every path but those of ``keep`` (VMs a restart did not adopt); how many."""
        async with self._writes.begin() as conn:
            result = await conn.execute(delete(_table).where(_table.c.vm_id.not_in(list(keep))))
        return int(result.rowcount)


def _record(row: Row[Any]) -> EgressRecord:
    return EgressRecord(
        vm_id=row.vm_id,
        port=row.port,
        providers=frozenset(Provider(value) for value in json.loads(row.providers)),
        allow_out=tuple(json.loads(row.allow_out)),
        deny_out=tuple(json.loads(row.deny_out)),
    )
