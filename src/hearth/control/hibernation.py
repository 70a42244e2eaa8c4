"""Hibernation of users' CLI VMs: saved to disk, their VMM ended, woken on demand.

``POST /api/vms/{id}/hibernate`` (or a lifetime's ``hibernate`` action) takes a ready or paused
CLI VM through ``hibernating`` to ``hibernated``: its delivered credentials are pulled back first
(as before a destroy: the CLI may have rotated them), then the node saves its memory and device
state, encrypted under a fresh key, next to its encrypted disk, and ends its VMM. The state key
and the disk key are sealed into the VM's row (``vm_keys``) and nowhere else. A hibernated VM
holds no host memory (admission does not count it), keeps its place in its user's VM quota, and
survives controller restarts and host reboots: its files stay in the state dir.

``resume`` wakes it (through ``booting``, with the keys from its row, a fresh egress path for a
CLI VM) with its token, files, running processes and delivered credentials; its guest clock is
set to the host's (an agent that answers it did not set it is logged as a warning: the VM wakes
all the same). A wake that would take its user past their disk quota is refused as a create
is (409 ``quota_exceeded``, ``DiskQuota.admit_wake``). A saved state that is missing or does
not open fails the VM with that reason (its files kept aside for inspection); any other
failure to wake leaves it hibernated. Both
run in the VM's turn (``VmService.turns``): a destroy during a hibernation or a wake waits for
it to end (the save is a task of its own, which a caller that gives up does not cut short), then
destroys the VM.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.agent_client import AgentClient
from hearth.control.agent_hooks import run_agent_hooks
from hearth.control.lifetimes import running_fields
from hearth.control.vm_keys import HeldKeys, VmKeys
from hearth.errors import (
    Conflict,
    HearthError,
    NotSupported,
    SavedStateCorrupt,
    VmError,
)
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.store.records import utc_now
from hearth.vm.host import bytes_on_disk
from hearth.vm.saved_files import state_path
from hearth.vm.types import BootMode, Vm, VmState, VmType

if TYPE_CHECKING:
    from hearth.control.vms import VmService

_log = get_logger("control.hibernation")
STATE_KEY_BYTES = 32  # an AES-256 key for the saved state, which the backend seals under it
HIBERNATABLE = (VmState.READY, VmState.PAUSED)
# About 317 years: no guest clock, however long it stood still, is further off than that.
MAX_CLOCK_OFFSET_S = 1e10
SHOWN_CHARS = 80  # of an answer the guest chose, in a log line


class Hibernation:
    """Hibernates and wakes the VMs of one ``VmService``."""

    def __init__(self, vms: VmService, keys: VmKeys) -> None:
        self.vms = vms
        self.keys = keys
        # The hibernations under way, by VM, each a task of its own: registered before it waits
        # for the VM's turn, so a second one is refused at once and a stop finds it.
        self._saving: dict[str, asyncio.Task[VmRecord]] = {}

    async def hibernate(self, vm_id: str, *, user_id: str | None = None) -> VmRecord:
        """Save a ready or paused CLI VM to disk and end its VMM; Conflict (naming its status)
        for any other, NotSupported where the node's VMM cannot.

        A caller that gives up (a dropped request, a lifetime check ended by a stop) does not
        cut the save short: a destroy waits for it (the VM's turn), ``stop`` cancels it."""
        await self.vms.get(vm_id, user_id=user_id)
        if vm_id in self._saving:  # its row is (or is about to be) hibernating
            raise Conflict(
                f"VM {vm_id} is hibernating; only a ready or paused VM can be hibernated"
            )
        task = asyncio.create_task(self._hibernate(vm_id))
        self._saving[vm_id] = task
        task.add_done_callback(lambda _t: self._saving.pop(vm_id, None))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        return await asyncio.shield(task)

    async def _hibernate(self, vm_id: str) -> VmRecord:
        """``hibernate``'s checks and save, in the VM's turn."""
        vms = self.vms
        async with vms.turns.held(vm_id):
            record = await vms.store.vms.get(vm_id)
            vm, disk_key = self._hibernatable(record)
            return await self._save(vm, record, disk_key)

    def _hibernatable(self, record: VmRecord) -> tuple[Vm, bytes | None]:
        """The VM of ``record`` and its disk key, if it can be hibernated; else Conflict (naming
        its status) or NotSupported (the node's VMM cannot)."""
        vms, vm_id = self.vms, record.id
        if record.vm_type is not VmType.CLI:
            raise Conflict(
                f"VM {vm_id} is a {record.vm_type.value} VM; it lives for one login and cannot "
                "be hibernated"
            )
        if record.status not in HIBERNATABLE:
            raise Conflict(
                f"VM {vm_id} is {record.status.value}; only a ready or paused VM can be hibernated"
            )
        if not vms.node.can_hibernate:  # said before anything is pulled back
            raise NotSupported(
                f"this host's VMM ({vms.node.vmm}) cannot hibernate VMs; pause keeps a VM in memory"
            )
        vm = vms.live_vm(vm_id)
        keys = self.keys.open(record)
        if keys is None:
            raise Conflict(f"VM {vm_id}: its keys do not open; it cannot be hibernated")
        return vm, keys.disk or vm.disk_key

    async def settled(self, vm_id: str) -> VmRecord:
        """VM ``vm_id``'s row, once a hibernation of it under way (if any) has ended, however
        it ended (hibernated, running or paused as it was, or failed)."""
        task = self._saving.get(vm_id)
        if task is not None:
            await asyncio.wait([task])  # a waiter that gives up does not cancel it
        return await self.vms.store.vms.get(vm_id)

    def under_way(self) -> list[str]:
        """The ids of the VMs being hibernated now."""
        return list(self._saving)

    async def stop(self) -> None:
        """Cancel the hibernations under way (the controller stops): the next controller
        settles each from what its VMM left."""
        saving = list(self._saving.values())
        for task in saving:
            task.cancel()
        await asyncio.gather(*saving, return_exceptions=True)

    async def _save(self, vm: Vm, record: VmRecord, disk_key: bytes | None) -> VmRecord:
        """``hibernate``'s work, from the row's move to hibernating on."""
        vms, vm_id, was = self.vms, vm.id, record.status
        state_key = secrets.token_bytes(STATE_KEY_BYTES)
        # The row first, so nothing else (a resume, a command) takes the VM now; with it the
        # state's key, sealed before the save begins: a controller that ends mid-save leaves a
        # row the next one can settle, and wake if the save completed.
        saving = await vms.store.vms.transition(
            vm_id,
            was,
            VmState.HIBERNATING,
            **running_fields(record, VmState.HIBERNATING, utc_now()),
            **self.keys.fields(vm_id, HeldKeys(disk=disk_key, state=state_key)),
        )
        try:
            # The pull-back first (the CLI may have rotated its tokens); a paused VM runs for it.
            workspaces = () if vms.workspaces is None else (vms.workspaces.before_hibernate,)
            hooks = (*vms.before_destroy, *workspaces)
            await run_agent_hooks(
                vms.node, vm, record, vm.token, hooks, before="hibernate", pause_after=True
            )
            await vms.node.hibernate(vm, state_key)
        except asyncio.CancelledError:
            # The controller is stopping: the next one settles the row from what the VMM left
            # (a completed save, woken with the key sealed above, or a VM running on).
            raise
        except BaseException as exc:
            if not vms.node.alive(vm):
                # A step after the save failed, the VMM already ended: what it left decides.
                return await self._after_ended_save(vm, exc)
            # The save failed: the VM runs (or stays paused) as it was.
            await vms.store.vms.transition(
                vm_id,
                VmState.HIBERNATING,
                was,
                **running_fields(saving, was, utc_now()),
                **self.keys.fields(vm_id, HeldKeys(disk=disk_key)),
            )
            raise
        return await self._asleep(vm_id)

    async def _asleep(self, vm_id: str) -> VmRecord:
        """The VM saved and its VMM ended: its row ``hibernated``, its network kept."""
        vms = self.vms
        vms.live.pop(vm_id, None)
        if vms.networks is not None:
            await vms.networks.suspend(vm_id)
        hibernated = await vms.store.vms.transition(
            vm_id, VmState.HIBERNATING, VmState.HIBERNATED, pid=None, hibernated_at=utc_now()
        )
        _log.info("vm_hibernated", vm_id=vm_id, user_id=hibernated.user_id)
        await vms.refresh_gauges()
        return hibernated

    async def _after_ended_save(self, vm: Vm, exc: BaseException) -> VmRecord:
        """A hibernation whose VMM ended although a step of it failed: hibernated when its
        saved state is whole (``settle_wake`` looks), else failed with the step's error."""
        settled = await self.vms.node.settle_wake(vm)
        _log.warning("hibernate_step_failed", vm_id=vm.id, error=str(exc)[:300], now=settled.value)
        if settled is VmState.HIBERNATED:
            return await self._asleep(vm.id)
        self.vms.live.pop(vm.id, None)
        if self.vms.networks is not None:
            await self.vms.networks.close(vm.id)
        error = exc if isinstance(exc, HearthError) else VmError(_lost(vm.id, exc, "hibernation"))
        await self._fail(vm.id, error=error, workdir=vm.workdir, was=VmState.HIBERNATING)
        raise error

    async def wake(self, record: VmRecord) -> VmRecord:
        """Start the hibernated VM of ``record`` (read in its turn: ``VmService.resume``) from
        its saved state, ready, its clock set; a VM whose saved state is missing or corrupt
        becomes failed with that reason (SavedStateCorrupt)."""
        vms, vm_id = self.vms, record.id
        keys = self.keys.open(record)
        token = vms.tokens.open(record)
        if keys is None or keys.state is None or token is None:
            error = SavedStateCorrupt(f"VM {vm_id}: the keys sealed in its row do not open")
            await self._fail(vm_id, error=error, workdir=record.workdir, was=VmState.HIBERNATED)
            raise error
        # Nothing is changed when refused: the VM stays hibernated, its saved state kept.
        saved = 0 if record.workdir is None else bytes_on_disk(state_path(record.workdir))
        await vms.disk_quota.admit_wake(
            record.user_id, record.id, saved_bytes=saved, workspaces=vms.workspaces
        )
        spec = vms.spec_for(record.vm_type, record.vcpus, record.mem_mib)
        async with vms.admission:
            # It will hold host memory again.
            await vms.quotas.admit_new_vm(vms.store, spec=spec)
            # Marked a wake, so a restart mid-wake knows to settle it (reconcile.py).
            await vms.store.vms.transition(
                vm_id, VmState.HIBERNATED, VmState.BOOTING, boot_mode=BootMode.WAKE
            )
        vm = Vm(
            id=vm_id,
            spec=spec,
            backend=record.backend,
            state=VmState.HIBERNATED,
            boot_mode=BootMode.WAKE,
            token=token,
            disk_key=keys.disk,
            workdir=record.workdir,
            created_at=record.created_at.timestamp(),
        )
        try:
            if vms.workspaces is not None:
                workspace = await vms.store.workspaces.get(record.user_id)
                vm.volumes = vms.workspaces.volumes_for(record, workspace)
            vm.spec = await vms.with_egress(vm_id, spec)
            vm = await vms.node.wake(vm, keys.state)
        except BaseException as exc:
            # Corrupt, or run from its saved state and lost after: nothing is left to wake.
            ended = isinstance(exc, SavedStateCorrupt) or vm.state is VmState.FAILED
            if vms.networks is not None:
                # Still hibernated, it keeps its policy for the next wake; failed, it ends.
                await (vms.networks.close if ended else vms.networks.suspend)(vm_id)
            if ended:
                reason = exc if isinstance(exc, HearthError) else VmError(_lost(vm_id, exc, "wake"))
                await self._fail(vm_id, error=reason, workdir=vm.workdir)
            else:
                await vms.store.vms.transition(vm_id, VmState.BOOTING, VmState.HIBERNATED)
            raise
        vms.live[vm_id] = vm
        try:
            offset = await set_guest_clock(vm)
        finally:
            # The VM runs: its row says so however the clock's setting (best effort) ended.
            woken = await self._woken(vm)
        _log.info(
            "vm_woken",
            vm_id=vm_id,
            user_id=record.user_id,
            clock_set=offset is not None,
            clock_offset_s=offset,
        )
        return woken

    async def _woken(self, vm: Vm) -> VmRecord:
        """The row of ``vm``, just woken and running, moved from booting to ready; Conflict
        if it moved on meanwhile."""
        vms = self.vms
        try:
            return await vms.store.vms.transition(
                vm.id,
                VmState.BOOTING,
                VmState.READY,
                **vms.fields_of(vm),  # the disk key alone: the state key is spent
            )
        except Conflict:
            # Its row moved on meanwhile (failed by the monitor, or by another controller): it
            # says so; what was woken goes, unless whoever moved it took it already.
            if vms.live.pop(vm.id, None) is not None:
                await vms.discard(vm)
            raise

    async def _fail(
        self,
        vm_id: str,
        *,
        error: HearthError,
        workdir: Path | None,
        was: VmState = VmState.BOOTING,
    ) -> None:
        """A wake or hibernation of VM ``vm_id`` left nothing to wake (its saved state or keys
        unusable, or its VMM ended without a whole state): fail it with ``error``, told as
        ``vm.failed``; its files stay where the node kept them (``workdir``), for inspection."""
        vms, stage = self.vms, "hibernate" if was is VmState.HIBERNATING else "wake"
        vms.metrics.failures.labels(stage=stage).inc()
        _log.warning("vm_failed", vm_id=vm_id, stage=stage, error=error.message[:300])
        record = await vms.store.vms.transition(
            vm_id, was, VmState.FAILED, error=error.message[:2000], workdir=workdir
        )
        await vms.announce(EventType.VM_FAILED, record, stage=stage, error=record.error)


async def set_guest_clock(vm: Vm) -> float | None:
    """Set the guest's clock to the host's (it stood still while the VM was saved or paused);
    how far off it was. None when it was not set, logged as ``vm_clock_not_set`` with why: the
    agent did not answer, answered that it did not set it (its kernel refused, or it runs
    outside a VM), or answered an offset that is no number of seconds a clock can be off (the
    guest's root chooses the answer). The VM runs on either way, its clock behind."""
    try:
        answer = await AgentClient(str(vm.agent_url), vm.token, vm_id=vm.id).set_clock(time.time())
    except HearthError as exc:
        _log.warning("vm_clock_not_set", vm_id=vm.id, reason=exc.message[:300])
        return None
    offset = answer.get("offsetS")
    offset_s = _seconds(offset)
    if answer.get("clockSet") is not True:
        reason = "the agent did not answer that it set the clock"
        _log.warning("vm_clock_not_set", vm_id=vm.id, reason=reason, offset_s=offset_s)
        return None
    if offset_s is None:
        reason = f"the agent answered an offset that is not a number of seconds: {_shown(offset)}"
        _log.warning("vm_clock_not_set", vm_id=vm.id, reason=reason)
        return None
    return offset_s


def _seconds(offset: object) -> float | None:
    """``offset`` as a clock offset in seconds: a finite number (not a bool) within
    ``MAX_CLOCK_OFFSET_S`` either way; else None."""
    if isinstance(offset, bool) or not isinstance(offset, int | float):
        return None
    # Compared before any conversion: an int too large for a float compares exactly, and NaN
    # (as JSON's NaN decodes) compares false.
    if not -MAX_CLOCK_OFFSET_S <= offset <= MAX_CLOCK_OFFSET_S:
        return None
    return float(offset)


def _shown(value: object) -> str:
    """``value`` as the guest answered it, cut short for a log line."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"an {type(value).__name__} too long to show"
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


def _lost(vm_id: str, exc: BaseException, during: str) -> str:
    return f"VM {vm_id}: its VMM ended in a {during} that failed ({type(exc).__name__})"
