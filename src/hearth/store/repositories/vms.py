"""VMs: their rows, lifecycle moves by compare-and-set, and what active VMs add up to."""

from __future__ import annotations

import builtins
from collections.abc import Collection
from typing import NoReturn

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from hearth.errors import Conflict, InvalidInput, NotFound, VmStateError
from hearth.store.models import users_table, vms_table
from hearth.store.records import INACTIVE_VM_STATES, VmRecord
from hearth.store.repositories._base import (
    Coerce,
    Repository,
    as_bool,
    as_enum,
    as_int,
    as_path,
    as_str,
    as_timestamp,
    check_fields,
    compare_and_set,
    enum_members,
    expected_statuses,
    optional,
    to_record,
    to_values,
)
from hearth.vm.types import BootMode, VmState, VmType, check_transition

# What ``update``/``transition`` may change; identity, type, backend and the bookkeeping
# timestamps are fixed or set by the repository itself. The owner changes when the warm pool
# hands a VM to a user.
UPDATABLE_FIELDS: dict[str, Coerce] = {
    "user_id": as_str,
    "agent_url": optional(as_str),
    "ip": optional(as_str),
    "host_port": optional(as_int),
    "pid": optional(as_int),
    "workdir": optional(as_path),
    "disk_path": optional(as_path),
    "disk_bytes": optional(as_int),
    "token_hash": optional(as_str),
    "boot_mode": optional(as_enum(BootMode)),
    "vcpus": as_int,
    "mem_mib": as_int,
    "ready_at": optional(as_timestamp),
    "destroyed_at": optional(as_timestamp),
    "error": optional(as_str),
    "pooled": as_bool,
}
_INACTIVE = sorted(INACTIVE_VM_STATES)


def _raise_if_owner_unknown(values: dict[str, object], exc: IntegrityError) -> None:
    # Checked values leave only the owner's foreign key to violate.
    if "user_id" in values:
        raise NotFound(f"user {values['user_id']} does not exist") from exc


class VmRepo(Repository):
    """Persists VMs; every status change is a compare-and-set."""

    async def insert(self, record: VmRecord) -> VmRecord:
        """Store a new VM; Conflict if its id is taken, NotFound if its user does not exist."""
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        vms_table.insert().values(to_values(record)).returning(*vms_table.c)
                    )
                ).one()
        except IntegrityError as exc:
            await self._explain_insert_failure(record, exc)
        return to_record(VmRecord, row)

    async def _explain_insert_failure(self, record: VmRecord, exc: IntegrityError) -> NoReturn:
        # Diagnosed after the failed write, in a fresh transaction, so the insert itself stays
        # a single statement that never reads before it writes.
        async with self._engine.connect() as conn:
            user = await conn.scalar(
                select(users_table.c.id).where(users_table.c.id == record.user_id)
            )
            taken = await conn.scalar(select(vms_table.c.id).where(vms_table.c.id == record.id))
        if user is None:
            raise NotFound(f"user {record.user_id} does not exist") from exc
        if taken is not None:
            raise Conflict(f"VM {record.id} already exists") from exc
        raise InvalidInput(f"VM {record.id} violates a constraint of the store") from exc

    async def get(self, vm_id: str) -> VmRecord:
        """The VM ``vm_id``; NotFound if there is none."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(vms_table).where(vms_table.c.id == vm_id))
            ).one_or_none()
        if row is None:
            raise NotFound(f"VM {vm_id} does not exist")
        return to_record(VmRecord, row)

    async def list(
        self, *, user_id: str | None = None, statuses: Collection[VmState] | None = None
    ) -> builtins.list[VmRecord]:
        """VMs, oldest first, optionally only ``user_id``'s and only in ``statuses``."""
        statement = select(vms_table).order_by(vms_table.c.created_at, vms_table.c.id)
        if user_id is not None:
            statement = statement.where(vms_table.c.user_id == user_id)
        if statuses is not None:
            statement = statement.where(vms_table.c.status.in_(enum_members(VmState, statuses)))
        async with self._engine.connect() as conn:
            rows = await conn.execute(statement)
        return [to_record(VmRecord, row) for row in rows]

    async def transition(
        self,
        vm_id: str,
        expected: VmState | Collection[VmState],
        new: VmState,
        **fields: object,
    ) -> VmRecord:
        """Move ``vm_id`` from one of ``expected`` to ``new`` (and set ``fields``) atomically.

        Exactly one of several racing callers wins; the others get Conflict naming the status
        they found. A move the transition table forbids is a Conflict too, raised before the
        database is touched. Entering ``destroyed`` stamps ``destroyed_at`` unless given.
        """
        values = check_fields("VM", UPDATABLE_FIELDS, fields)
        olds = expected_statuses(VmState, expected)
        [new] = enum_members(VmState, [new])
        for old in olds:
            try:
                check_transition(vm_id, old, new)
            except VmStateError as exc:
                raise Conflict(exc.message) from exc
        now = self._clock()
        if new is VmState.DESTROYED:
            values.setdefault("destroyed_at", now)
        values.update(status=new, updated_at=now)
        try:
            async with self._engine.begin() as conn:
                row = await compare_and_set(
                    conn, vms_table, what="VM", row_id=vm_id, expected=olds, values=values
                )
        except IntegrityError as exc:
            _raise_if_owner_unknown(values, exc)
            raise
        return to_record(VmRecord, row)

    async def update(self, vm_id: str, **fields: object) -> VmRecord:
        """Set non-status ``fields`` of ``vm_id``; status only changes through ``transition``."""
        if "status" in fields:
            raise InvalidInput("a VM's status changes only through transition()")
        values = check_fields("VM", UPDATABLE_FIELDS, fields)
        values["updated_at"] = self._clock()
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        update(vms_table)
                        .where(vms_table.c.id == vm_id)
                        .values(values)
                        .returning(*vms_table.c)
                    )
                ).one_or_none()
        except IntegrityError as exc:
            _raise_if_owner_unknown(values, exc)
            raise
        if row is None:
            raise NotFound(f"VM {vm_id} does not exist")
        return to_record(VmRecord, row)

    async def count_active(
        self, *, user_id: str | None = None, vm_type: VmType | None = None
    ) -> int:
        """How many VMs are neither destroyed nor failed, optionally of one user or type."""
        statement = (
            select(func.count()).select_from(vms_table).where(vms_table.c.status.not_in(_INACTIVE))
        )
        if user_id is not None:
            statement = statement.where(vms_table.c.user_id == user_id)
        if vm_type is not None:
            [wanted] = enum_members(VmType, [vm_type])
            statement = statement.where(vms_table.c.vm_type == wanted)
        async with self._engine.connect() as conn:
            return int(await conn.scalar(statement) or 0)

    async def sum_active_mem_mib(self) -> int:
        """The memory, in MiB, of every VM that is neither destroyed nor failed."""
        statement = select(func.coalesce(func.sum(vms_table.c.mem_mib), 0)).where(
            vms_table.c.status.not_in(_INACTIVE)
        )
        async with self._engine.connect() as conn:
            return int(await conn.scalar(statement) or 0)
