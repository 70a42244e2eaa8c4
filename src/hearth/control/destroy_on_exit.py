"""``--destroy-on-exit``: every VM of a stopping controller destroyed, whatever its state.

Not only the VMs whose VMM runs (ready, unhealthy, paused, pooled): a VM being hibernated is
destroyed once its save has ended, and one already hibernated (no VMM, its state saved on disk)
is destroyed with its saved state, so what a stop leaves never depends on whether a
hibernation happened to finish just before it. Each goes through ``VmService.destroy``, as
``DELETE /api/vms/{id}`` does: its row first, the destroy hooks (the credential pull-back, the
workspace's sync) only for a VM whose agent runs (a hibernated VM had them before its save),
then its VMM and files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hearth.errors import HearthError
from hearth.logging import get_logger
from hearth.store import INACTIVE_VM_STATES
from hearth.vm.types import VmState

if TYPE_CHECKING:
    from hearth.control.vms import VmService

_log = get_logger("control.destroy_on_exit")


async def destroy_every_vm(vms: VmService) -> None:
    """Destroy every VM ``vms`` holds or has a row of that is not destroyed or failed; a
    destroy that fails is logged (``shutdown_destroy_error``) and the others go on."""
    rows = await vms.store.vms.list(statuses=[s for s in VmState if s not in INACTIVE_VM_STATES])
    for vm_id in dict.fromkeys([*vms.live, *vms.hibernation.under_way(), *(r.id for r in rows)]):
        try:
            await vms.destroy(vm_id, include_pooled=True)
        except HearthError as exc:
            _log.warning("shutdown_destroy_error", vm_id=vm_id, error=exc.message[:300])
