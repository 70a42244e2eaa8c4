"""Admission: VMs per user and type, Browser VMs host-wide, memory against host RAM, and each
user's disk (``HEARTH_USER_DISK_QUOTA_MIB``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.config import Settings
from hearth.control.disk_use import NEW_VM_LAYER_MIB, DiskUse, mib_rounded_up
from hearth.errors import CapacityExhausted, QuotaExceeded
from hearth.store import Store
from hearth.vm.types import VmSpec, VmType

if TYPE_CHECKING:
    from hearth.control.workspaces import Workspaces


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Total host RAM in MiB."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


@dataclass(frozen=True, kw_only=True)
class Quotas:
    """The limits a create request must fit in."""

    per_user: dict[VmType, int]
    max_browser_vms: int
    memory_limit_mib: int

    @classmethod
    def from_settings(cls, settings: Settings, *, host_mib: int | None = None) -> Quotas:
        """Limits from the settings; memory is a share of this host's RAM."""
        total = host_memory_mib() if host_mib is None else host_mib
        return cls(
            per_user={
                VmType.CLI: settings.max_cli_per_user,
                VmType.BROWSER: settings.max_browser_per_user,
            },
            max_browser_vms=settings.max_browser_vms,
            memory_limit_mib=int(total * settings.memory_share),
        )

    async def admit_user(self, store: Store, *, user_id: str, spec: VmSpec) -> None:
        """Raise QuotaExceeded (409) if ``user_id`` already has as many VMs of the type as allowed.

        Checked for every create, a warm-pool hand-out included.
        """
        limit = self.per_user[spec.vm_type]
        have = await store.vms.count_active(user_id=user_id, vm_type=spec.vm_type)
        if have >= limit:
            raise QuotaExceeded(
                f"user {user_id} already has {have} {spec.vm_type.value} VM(s); the limit is "
                f"{limit}. Destroy one first."
            )

    async def admit_new_vm(self, store: Store, *, spec: VmSpec) -> None:
        """Raise CapacityExhausted (429) unless the host has room for one more VM of ``spec``.

        Checked for every VM that will start (a user's or a warm pool's), not for a hand-out of a
        VM the pool already runs: that one is already counted.
        """
        if spec.vm_type is VmType.BROWSER:
            browsers = await store.vms.count_active(vm_type=VmType.BROWSER)
            if browsers >= self.max_browser_vms:
                raise CapacityExhausted(
                    f"{browsers} Browser VMs are running, the host-wide limit is "
                    f"{self.max_browser_vms}; retry later"
                )
        used = await store.vms.sum_active_mem_mib()
        if used + spec.mem_mib > self.memory_limit_mib:
            raise CapacityExhausted(
                f"not enough memory: {used} MiB in use + {spec.mem_mib} MiB requested exceeds "
                f"the admission limit of {self.memory_limit_mib} MiB; retry later"
            )


@dataclass(frozen=True, kw_only=True)
class DiskQuota:
    """``HEARTH_USER_DISK_QUOTA_MIB``: what a user's disk use may reach when a CLI VM of theirs
    is created. Checked at admission only: a VM that grows past it runs on."""

    limit_mib: int
    disk_use: DiskUse

    async def admit_vm(self, user_id: str, spec: VmSpec, workspaces: Workspaces | None) -> None:
        """``admit`` a new VM of ``spec`` for ``user_id``: a CLI VM, their workspace counted
        (``Workspaces.counted_mib``: none without ``workspaces``); other VMs count no disk."""
        if spec.vm_type is VmType.CLI:
            workspace_mib = await workspaces.counted_mib(user_id) if workspaces else 0
            await self.admit(user_id, workspace_mib=workspace_mib)

    async def admit(self, user_id: str, *, workspace_mib: int) -> None:
        """QuotaExceeded (409) unless ``user_id``'s disk use with a new VM is within the limit:
        ``workspace_mib`` for their workspace (its full size, made yet or not; 0 when workspaces
        are off), what their active VMs hold on the node, measured now, and the new VM's own
        layer as it starts."""
        held = mib_rounded_up(await self.disk_use.held_now(user_id))
        total = workspace_mib + held + NEW_VM_LAYER_MIB
        if total > self.limit_mib:
            raise QuotaExceeded(
                f"user {user_id} would use {total} MiB of disk (workspace {workspace_mib} MiB, "
                f"their VMs' disks {held} MiB, the new VM's own layer {NEW_VM_LAYER_MIB} MiB); "
                f"the quota is {self.limit_mib} MiB (HEARTH_USER_DISK_QUOTA_MIB)"
            )

    async def admit_wake(
        self, user_id: str, vm_id: str, *, saved_bytes: int, workspaces: Workspaces | None
    ) -> None:
        """QuotaExceeded (409, as a create gets) when ``user_id`` would be past the limit with
        hibernated VM ``vm_id`` woken: their workspace and their VMs' disks measured now, as a
        create counts them, less the VM's saved state (``saved_bytes``), which the wake reads in
        and drops (it adds nothing else: its layer is on the node already). So a user already
        past it wakes nothing, and one whose hibernation alone took them past it still can."""
        workspace_mib = await workspaces.counted_mib(user_id) if workspaces else 0
        held = mib_rounded_up(max(await self.disk_use.held_now(user_id) - saved_bytes, 0))
        total = workspace_mib + held
        if total > self.limit_mib:
            raise QuotaExceeded(
                f"user {user_id} would use {total} MiB of disk with VM {vm_id} woken "
                f"(workspace {workspace_mib} MiB, their VMs' disks {held} MiB, its saved "
                f"state, dropped by the wake, not counted); the quota is {self.limit_mib} MiB "
                f"(HEARTH_USER_DISK_QUOTA_MIB). It stays hibernated: free disk first"
            )
