"""VMs' disk use: what each active VM's own files hold on its node, kept current on its row.

A VM's ``disk_bytes`` is what its own files occupy on the node (``Node.disk_held``): its
copy-on-write disk layer, which root in the guest can fill, and while it is hibernated its saved
state too. A VM starts with an almost empty layer and grows, so every ``interval_s`` the active
VMs are measured again; a row is written only when its figure moved by a MiB or more (or was
unknown), so a guest writing all the time costs one store write per round, not one per page.
``DiskQuota.admit`` measures the user's VMs again before it counts them against
``HEARTH_USER_DISK_QUOTA_MIB``, and a wake (``Hibernation.wake``) counts them the same way;
nothing here stops a VM that grows past the quota.
"""

from __future__ import annotations

from pathlib import Path

from hearth.errors import NotFound
from hearth.logging import get_logger
from hearth.node.interface import Node
from hearth.periodic import every
from hearth.store import Store
from hearth.store.records import INACTIVE_VM_STATES
from hearth.vm.types import VmState

_log = get_logger("control.disk_use")
MIB = 1024 * 1024
# How often the active VMs' disks are measured (a few stats each, in a thread).
REFRESH_INTERVAL_S = 30.0
# What a new VM's own layer holds as it starts: an empty qcow2 overlay is ≈ 0.2 MiB, ≈ 2.2 MiB
# with its LUKS header (qemu-img 7.2, measured); counted by admission before the VM exists.
NEW_VM_LAYER_MIB = 3
_ACTIVE = tuple(state for state in VmState if state not in INACTIVE_VM_STATES)


def mib_rounded_up(size_bytes: int) -> int:
    """``size_bytes`` in whole MiB, a part counted whole."""
    return -(-size_bytes // MIB)


class DiskUse:
    """Measures active VMs' files on the node and keeps their rows' ``disk_bytes`` current."""

    def __init__(self, *, store: Store, node: Node, interval_s: float | None = None) -> None:
        self.store = store
        self.node = node
        self.interval_s = REFRESH_INTERVAL_S if interval_s is None else interval_s

    async def run(self) -> None:
        """Refresh forever (cancel to stop); a round that fails is logged and the next runs."""
        await every(self.interval_s, self.refresh, what="disk use")

    async def refresh(self, *, user_id: str | None = None) -> int:
        """Measure the active VMs (``user_id``'s only, when given) that have a work dir, and
        write each one's figure where it moved by a MiB or more; how many rows were written."""
        written = 0
        for record in await self.store.vms.list(user_id=user_id, statuses=_ACTIVE):
            if record.workdir is None:
                continue  # not started yet: nothing of it is on the node
            held = await self.node.disk_held(Path(record.workdir))
            if held is None or not _moved(record.disk_bytes, held):
                continue
            try:
                await self.store.vms.update(record.id, disk_bytes=held)
            except NotFound:
                continue  # its row went meanwhile
            written += 1
            _log.debug("vm_disk_measured", vm_id=record.id, was=record.disk_bytes, now=held)
        return written

    async def held_now(self, user_id: str) -> int:
        """The bytes ``user_id``'s active VMs hold on the node, measured now (``refresh``)."""
        await self.refresh(user_id=user_id)
        return await self.store.vms.sum_active_disk_bytes(user_id)


def _moved(recorded: int | None, measured: int) -> bool:
    return recorded is None or abs(measured - recorded) >= MIB
