"""Teardown of a VM: its row ``stopping`` first, the destroy hooks against its agent, its VMM and
files ended, its row ``destroyed``.

A boot under way ends first (``Boots.stop``: the node's create cancelled if its VMM is not up
yet), its row still counting in every limit: a destroy must not free the VM's place while its
VMM boots on. The row then moves first, so nothing else (a command, a lifetime's action) takes
the VM meanwhile, and its lifetime stops counting. A teardown runs in the VM's turn
(``VmService.turns``): a pause, resume, hibernation or wake of the VM under way ends before it
starts (a save or a wake is not cut short, and the hooks meet the VM as its row says it is),
and none starts until it has ended.
The hooks (the credential pull-back, the workspace's sync and unmount) run for a VM whose agent
runs: a paused one runs again for them; a hibernated one had them before its save. A
controller that ends mid-teardown leaves the row ``stopping``: the next one finishes it at its
start (``finish_after_restart``), the hooks run if its VMM is still there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hearth.control.agent_hooks import run_agent_hooks
from hearth.control.boots import STOPPED_BOOT
from hearth.control.lifetimes import running_fields
from hearth.errors import Conflict
from hearth.logging import get_logger
from hearth.shared_tasks import SharedTasks
from hearth.store import VmRecord
from hearth.store.records import RUNNING_VM_STATES, utc_now
from hearth.vm.types import Vm, VmSpec, VmState

if TYPE_CHECKING:
    from hearth.control.vms import VmService

_log = get_logger("control.teardown")
# How often a teardown reads the row again when it moved on between a read and a write.
_RACES = 5


class Teardowns:
    """Tears down the VMs of one ``VmService``: one teardown per VM, which a destroy arriving
    while it runs waits for and shares the end of (so the hooks run once)."""

    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        self._running: SharedTasks[VmRecord] = SharedTasks()

    async def join(self, vm_id: str) -> VmRecord:
        """VM ``vm_id`` destroyed, by the teardown under way or by one started now."""
        return await self._running.join(vm_id, lambda: self._tear_down(vm_id))

    async def wait(self) -> None:
        """Until every teardown under way has ended."""
        await self._running.wait()

    async def finish_after_restart(self, record: VmRecord, vm: Vm | None) -> VmRecord:
        """Finish the teardown of ``record``'s VM (``stopping``) that a controller ended in, at
        this one's start: the hooks against ``vm`` when its VMM still runs and its agent token
        opens, then ``finish``."""
        token = self.vms.tokens.open(record) or (vm.token if vm is not None else None)
        if vm is not None and token is not None:
            # Its row no longer says whether it was paused: resumed for the hooks either way
            # (a VMM that runs takes the resume as nothing to do).
            vm.state = VmState.PAUSED
            await self.run_hooks(vm, record, token)
        return await self.finish(record, vm)

    async def run_hooks(self, vm: Vm | None, record: VmRecord, token: str | None) -> None:
        """The destroy hooks: the credential pull-back, the workspace's sync and unmount."""
        vms = self.vms
        workspaces = () if vms.workspaces is None else (vms.workspaces.before_destroy,)
        hooks = (*vms.before_destroy, *workspaces)
        await run_agent_hooks(vms.node, vm, record, token, hooks, before="destroy")

    async def finish(self, record: VmRecord, vm: Vm | None) -> VmRecord:
        """End what is left of ``record``'s VM (its row ``stopping``): its VMM (``vm``, else the
        one its row names) and its files; its row then ``destroyed``."""
        vm_id = record.id
        if vm is None and record.workdir is not None:
            vm = Vm(id=vm_id, spec=VmSpec(), backend=record.backend, workdir=Path(record.workdir))
            vm.pid, vm.state = record.pid, VmState.FAILED
        if vm is not None:
            if vm.state is VmState.STOPPING:
                vm.state = VmState.FAILED
            await self.vms.discard(vm)
        _log.info("vm_destroyed", vm_id=vm_id, user_id=record.user_id)
        return await self.vms.store.vms.transition(vm_id, VmState.STOPPING, VmState.DESTROYED)

    async def _tear_down(self, vm_id: str) -> VmRecord:
        vms = self.vms
        async with vms.turns.held(vm_id):
            await vms.boots.stop(vm_id)
            was, record = await self._stopping(vm_id)
            if record.status is VmState.DESTROYED:
                return record
            if was.status in RUNNING_VM_STATES:  # its agent runs: the hooks are run
                await self.run_hooks(vms.live.get(vm_id), was, vms.agent_token(vm_id))
            return await self.finish(record, vms.live.pop(vm_id, None))

    async def _stopping(self, vm_id: str) -> tuple[VmRecord, VmRecord]:
        """VM ``vm_id``'s row as it was and as it is now: ``stopping`` (or ``destroyed``)."""
        store, attempt = self.vms.store, 0
        while True:
            # Read again when the row moves on between this read and a write (a boot goes on).
            record = await store.vms.get(vm_id)
            if record.status is VmState.DESTROYED:
                return record, record
            try:
                if record.status in (VmState.CREATING, VmState.BOOTING):
                    # No boot of this controller's runs for it (``stop`` waited for any): a row
                    # a boot has yet to take up, which then finds it gone from creating.
                    record = await store.vms.transition(
                        vm_id, record.status, VmState.FAILED, error=STOPPED_BOOT
                    )
                was = record
                if record.status is not VmState.STOPPING:
                    times = running_fields(record, VmState.STOPPING, utc_now())
                    record = await store.vms.transition(
                        vm_id, record.status, VmState.STOPPING, **times
                    )
                return was, record
            except Conflict:
                attempt += 1
                if attempt == _RACES:
                    raise
