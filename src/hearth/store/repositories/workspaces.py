"""Users' workspace volumes: at most one per user, and the VM each was last attached to."""

from __future__ import annotations

from sqlalchemy import delete, select, update
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

    async def attach(self, workspace_id: str, vm_id: str | None) -> None:
        """Record the VM the workspace is now attached to (None: none)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(_table).where(_table.c.id == workspace_id).values(vm_id=vm_id)
            )

    async def delete(self, workspace_id: str) -> None:
        """Forget the workspace (its file was removed)."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(_table).where(_table.c.id == workspace_id))
