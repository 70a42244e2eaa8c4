"""VMs: their rows, lifecycle moves by compare-and-set, users' VMs a page at a time, and what
active VMs add up to."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import ColumnElement, func, select, update

from hearth.errors import Conflict, NotFound
from hearth.store.models import vms_table
from hearth.store.records import (
    INACTIVE_VM_STATES,
    SEALED_KEYS_FIELDS,
    SEALED_TOKEN_FIELDS,
    VmRecord,
)
from hearth.store.repositories._base import (
    Coerce,
    as_bool,
    as_bytes,
    as_enum,
    as_float,
    as_int,
    as_path,
    as_str,
    as_timestamp,
    check_fields,
    compare_and_set,
    enum_members,
    optional,
    to_record,
)
from hearth.store.repositories._status import StatusRepository
from hearth.vm.types import BootMode, LifetimeAction, VmState, VmType, check_transition

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
    "token_key_id": optional(as_str),
    "token_nonce": optional(as_bytes),
    "token_ciphertext": optional(as_bytes),
    "boot_mode": optional(as_enum(BootMode)),
    "vcpus": as_int,
    "mem_mib": as_int,
    "ready_at": optional(as_timestamp),
    "destroyed_at": optional(as_timestamp),
    "error": optional(as_str),
    "pooled": as_bool,
    "agent_version": optional(as_str),
    "timeout_s": optional(as_int),
    "timeout_action": as_enum(LifetimeAction),
    "idle_timeout_s": optional(as_int),
    "idle_action": as_enum(LifetimeAction),
    "auto_resume": as_bool,
    "lifetime_used_s": as_float,
    "running_since": optional(as_timestamp),
    "keys_key_id": optional(as_str),
    "keys_nonce": optional(as_bytes),
    "keys_ciphertext": optional(as_bytes),
    "hibernated_at": optional(as_timestamp),
}
_INACTIVE = sorted(INACTIVE_VM_STATES)
_NO_MEMORY = sorted({*INACTIVE_VM_STATES, VmState.HIBERNATED})
# What a VM leaving for good no longer needs kept: its sealed agent token and keys.
_SEALED_GONE: dict[str, object] = dict.fromkeys((*SEALED_TOKEN_FIELDS, *SEALED_KEYS_FIELDS))


class VmRepo(
    StatusRepository[VmRecord, VmState],
    table=vms_table,
    record=VmRecord,
    status=VmState,
    what="VM",
    updatable=UPDATABLE_FIELDS,
    check=check_transition,
    stamps={VmState.DESTROYED: "destroyed_at"},
):
    """Persists VMs; every status change is a compare-and-set.

    Entering ``destroyed`` stamps ``destroyed_at`` unless the caller set it; entering
    ``destroyed`` or ``failed`` drops the sealed agent token and keys (nothing will reach that
    agent, nor open that disk or saved state again).
    """

    async def transition(
        self, row_id: str, expected: VmState | Collection[VmState], new: VmState, **fields: object
    ) -> VmRecord:
        """``StatusRepository.transition``; an inactive ``new`` clears the sealed secrets."""
        if new in INACTIVE_VM_STATES:
            fields = {**_SEALED_GONE, **fields}
        return await super().transition(row_id, expected, new, **fields)

    async def fail_each(
        self, moves: Sequence[tuple[VmRecord, Mapping[str, object]]], *, unseal_key_id: str
    ) -> list[VmRecord]:
        """In one transaction: move each VM ``record`` from the status it was read in to
        ``failed`` with its ``fields`` (its error, ...), its sealed secrets dropped as every
        failure drops them; then drop whatever VM row still holds a secret sealed under master
        key ``unseal_key_id`` (an ended VM's). A VM that moved on meanwhile is left out (its
        secrets stay: a rerun sees it again). The VMs failed. For ``hearth keys
        forget-master``, which runs while no controller does."""
        now = self._clock()
        failed = []
        async with self._writes.begin() as conn:
            for record, fields in moves:
                self._check_move(record.id, record.status, VmState.FAILED)
                values = check_fields(self._what, self._updatable, {**_SEALED_GONE, **fields})
                values.update(status=VmState.FAILED, updated_at=now)
                try:
                    row = await compare_and_set(
                        conn, vms_table, what=self._what, row_id=record.id,
                        expected=(record.status,), values=values,
                    )  # fmt: skip
                except (Conflict, NotFound):
                    continue
                failed.append(to_record(VmRecord, row))
            for columns in (SEALED_TOKEN_FIELDS, SEALED_KEYS_FIELDS):
                under = vms_table.c[columns[0]] == unseal_key_id
                await conn.execute(update(vms_table).where(under).values(dict.fromkeys(columns)))
        return failed

    def _paged(self) -> list[ColumnElement[bool]]:
        """Pages are users' VMs: never the warm pool's (``list`` reads those too)."""
        return [vms_table.c.pooled.is_(False)]

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

    async def sum_active_disk_bytes(self, user_id: str) -> int:
        """The bytes the disk layers of ``user_id``'s active VMs occupy."""
        statement = select(func.coalesce(func.sum(vms_table.c.disk_bytes), 0)).where(
            vms_table.c.status.not_in(_INACTIVE), vms_table.c.user_id == user_id
        )
        async with self._engine.connect() as conn:
            return int(await conn.scalar(statement) or 0)

    async def sum_active_mem_mib(self) -> int:
        """The memory, in MiB, of every VM that holds (or will hold) host memory: neither
        destroyed, failed nor hibernated (whose memory is on disk)."""
        statement = select(func.coalesce(func.sum(vms_table.c.mem_mib), 0)).where(
            vms_table.c.status.not_in(_NO_MEMORY)
        )
        async with self._engine.connect() as conn:
            return int(await conn.scalar(statement) or 0)
