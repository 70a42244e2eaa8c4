"""Users' workspace volumes: at most one per user, and the VM each was last attached to."""

from __future__ import annotations

from sqlalchemy import Delete, Update, delete, select, update
from sqlalchemy.exc import IntegrityError

from hearth.store.models import workspaces_table
from hearth.store.records import WorkspaceRecord
from hearth.store.repositories._base import Repository, to_record

_table = workspaces_table


class WorkspaceRepo(Repository):
    """Persists each user's workspace volume."""

    async def insert(self, record: WorkspaceRecord) -> WorkspaceRecord:
        """Store a new workspace; the user's existing one if they already have one (a create
        that raced another)."""
        try:
            return await self._insert_record(_table, record)
        except IntegrityError as exc:
            existing = await self.get(record.user_id)
            if existing is None:
                await self._raise_if_user_missing(record.user_id, exc)
                raise
            return existing

    async def get(self, user_id: str) -> WorkspaceRecord | None:
        """The user's workspace, or None."""
        row = await self._read_one(select(_table).where(_table.c.user_id == user_id))
        return None if row is None else to_record(WorkspaceRecord, row)

    async def ids(self) -> set[str]:
        """Every stored workspace's id (its volume's name on the node)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(_table.c.id))
        return {str(row.id) for row in rows}

    async def held_by(self, vm_id: str) -> WorkspaceRecord | None:
        """The workspace recorded as held by VM ``vm_id``, if any."""
        row = await self._read_one(select(_table).where(_table.c.vm_id == vm_id))
        return None if row is None else to_record(WorkspaceRecord, row)

    async def claim(self, workspace_id: str, vm_id: str | None, *, held_by: str | None) -> bool:
        """Record VM ``vm_id`` as the workspace's holder (None: no VM, a release) if ``held_by``
        still is (None: no VM); whether it was (False: another VM claimed it, or it was
        deleted, meanwhile)."""
        return await self._change_if_held(update(_table).values(vm_id=vm_id), workspace_id, held_by)

    async def delete(self, workspace_id: str, *, held_by: str | None) -> bool:
        """Forget the workspace if ``held_by`` still holds it (None: no VM); whether it did."""
        return await self._change_if_held(delete(_table), workspace_id, held_by)

    async def _change_if_held(
        self, statement: Update | Delete, workspace_id: str, held_by: str | None
    ) -> bool:
        holder = _table.c.vm_id.is_(None) if held_by is None else _table.c.vm_id == held_by
        async with self._writes.begin() as conn:
            result = await conn.execute(statement.where(_table.c.id == workspace_id, holder))
        return bool(result.rowcount == 1)
