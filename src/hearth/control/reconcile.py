"""Reconciliation: rows and running VMs made to agree when the controller (re)starts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hearth.control.lifetimes import running_fields
from hearth.control.vms import ACTIVE, RUNNING, VmService
from hearth.errors import HearthError
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.store.records import utc_now
from hearth.vm.saved_files import drop_stale_partial, state_path
from hearth.vm.types import BootMode, Vm, VmSpec, VmState

_log = get_logger("control.reconcile")


async def reconcile(vms: VmService) -> dict[str, list[str]]:
    """Make rows and running VMs agree after a (re)start; run before serving.

    Rows whose VM process is gone become ``failed``; VMs that were still booting when the
    controller died are destroyed and failed (nobody waits for them any more); ready and
    paused VMs with a live process and an agent token and keys that open are adopted (a CLI
    VM's egress path reopened where its VMM dials it; one whose port another process took is
    failed), and one that was being hibernated is
    hibernated if its saved state was completed (its VMM, if still there, ended), else adopted
    paused (its save ended with the controller, and what it had written of the saved state
    is removed, as from every VM's work dir); hibernated VMs are left as they are,
    and one caught mid-wake goes back to hibernated while its saved state is there (the guest
    never ran), or is adopted paused when its VMM runs from the consumed state; a VM being
    destroyed when the controller died is destroyed now (its destroy hooks run first if its
    VMM still does: its credentials are pulled back); processes, work dirs, namespaces and
    network slots with no active row are destroyed, and so are volume files no workspace row
    names (``Workspaces.reap_orphans``).
    """
    report: dict[str, list[str]] = {
        "failed": [],
        "adopted": [],
        "reaped": [],
        "hibernated": [],
        "destroyed": [],
        "volumes": [],
    }
    running = {vm.id: vm for vm in await vms.node.list_running()}
    for record in await vms.store.vms.list(statuses=ACTIVE):
        vm = running.get(record.id)
        if record.status is VmState.STOPPING:
            await vms.teardowns.finish_after_restart(record, vm)
            report["destroyed"].append(record.id)
            continue
        if record.workdir is not None and record.id not in vms.hibernation.under_way():
            # A save the last controller's end cut short (kill -9) left part of a saved state.
            # No save writes it now: its writer was that controller (this one holds the state
            # dir's lock, so it has exited), and this one has started none.
            drop_stale_partial(state_path(Path(record.workdir)), during="restart")
        if _waking(record) or _saving(vms, record):
            vm, settled = await _settle_wake(vms, record, vm)
            if settled is VmState.HIBERNATED:
                saved = {"hibernated_at": utc_now()} if record.status is VmState.HIBERNATING else {}
                record = await vms.store.vms.transition(
                    record.id, record.status, VmState.HIBERNATED, pid=None, **saved
                )
        if record.status is VmState.HIBERNATED:
            report["hibernated"].append(record.id)  # nothing runs; its files stay
            continue
        reason = await _adoptable(vms, record, vm)
        if vm is not None and reason is None:
            reason = await _volumes_again(vms, record, vm)
        if vm is not None and reason is None and vms.networks is not None:
            # Where its VMM dials its egress proxy: a VM that cannot have its own proxy there
            # again would reach whatever else listens on that port.
            reason = await vms.networks.reopen(record.id)
        if vm is not None and reason is None:
            # The controller died while saving it, or while waking it from its consumed saved
            # state (whose key is spent: the row keeps the disk key alone): its QEMU holds
            # it, stopped.
            stopped = record.status in (VmState.HIBERNATING, VmState.BOOTING)
            if record.status is VmState.BOOTING:
                record = await vms.store.vms.transition(
                    record.id, VmState.BOOTING, VmState.READY, **vms.fields_of(vm)
                )
            if stopped:
                record = await vms.store.vms.transition(record.id, record.status, VmState.PAUSED)
            vm.state = VmState.PAUSED if record.status is VmState.PAUSED else VmState.READY
            # The row's size; what the node read of its devices (network, volume slot) kept.
            vm.spec = replace(
                vm.spec, vm_type=record.vm_type, vcpus=record.vcpus, mem_mib=record.mem_mib
            )
            vms.live[record.id] = vm
            report["adopted"].append(record.id)
            continue
        times = running_fields(record, VmState.FAILED, utc_now())
        failed = await vms.store.vms.transition(
            record.id, record.status, VmState.FAILED, error=reason, **times
        )
        vms.metrics.failures.labels(stage="restart").inc()
        await vms.announce(EventType.VM_FAILED, failed, stage="restart", error=reason)
        report["failed"].append(record.id)
    report["reaped"] = await vms.node.reap(keep={*vms.live, *report["hibernated"]})
    if vms.workspaces is not None:
        report["volumes"] = await vms.workspaces.reap_orphans()
    if vms.networks is not None:
        await vms.networks.forget_others(keep={*vms.live, *report["hibernated"]})
    _log.info("reconciled", **{k: len(v) for k, v in report.items()})
    return report


async def _volumes_again(vms: VmService, record: VmRecord, vm: Vm) -> str | None:
    """Give ``vm`` the workspace it holds (a hibernation pins it, a hot-plug counts it); why it
    cannot be adopted when that workspace's key does not open (one VM failed, not the start)."""
    if vms.workspaces is None:
        return None
    workspace = await vms.store.workspaces.held_by(record.id)
    try:
        vm.volumes = vms.workspaces.volumes_for(record, workspace)
    except HearthError as exc:
        return f"its workspace could not be opened at controller start: {exc.message}"
    return None


def _waking(record: VmRecord) -> bool:
    return record.status is VmState.BOOTING and record.boot_mode is BootMode.WAKE


def _saving(vms: VmService, record: VmRecord) -> bool:
    """A hibernation the last controller did not see through, its state's key sealed first
    (as this controller seals it): the saved state, if it was completed, can be woken."""
    if record.status is not VmState.HIBERNATING:
        return False
    keys = vms.keys.open(record)
    return keys is not None and keys.state is not None


async def _settle_wake(
    vms: VmService, record: VmRecord, vm: Vm | None
) -> tuple[Vm | None, VmState]:
    """Settle a wake the last controller did not see through: the VM (None once its VMM is
    gone) and where it stands (``VmBackend.settle_wake``)."""
    found = vm or Vm(id=record.id, spec=VmSpec(), backend=record.backend, pid=record.pid)
    if record.workdir is not None:
        found.workdir = Path(record.workdir)
    try:
        settled = await vms.node.settle_wake(found)
    except HearthError as exc:
        _log.warning("wake_not_settled", vm_id=record.id, error=exc.message[:300])
        settled = VmState.FAILED
    _log.info("wake_settled", vm_id=record.id, status=settled.value)
    return (found if settled is VmState.PAUSED else None), settled


async def _adoptable(vms: VmService, record: VmRecord, vm: Vm | None) -> str | None:
    """Why the running ``vm`` of ``record`` cannot be adopted (None: it can, and it holds
    its agent token again)."""
    if vm is None and _waking(record):
        return "its wake was cut short by a controller restart after its saved state was read"
    if vm is None:
        return "VM process gone at controller start"
    if record.status not in (*RUNNING, VmState.HIBERNATING) and not _waking(record):
        return "interrupted by a controller restart while booting"
    keys = vms.keys.open(record)
    if keys is None:
        return "its disk key could not be opened at controller start"
    vm.disk_key = keys.disk
    token = vms.tokens.open(record)
    if token is None and vm.token is not None:
        # Kept in clear in its work dir by an older controller: sealed into the row now
        # (the node's reap removes the file).
        token = vm.token
        await vms.store.vms.update(record.id, **vms.tokens.fields(record.id, token))
    if token is None and record.pooled:
        return "a pooled VM an older controller left unclaimed"
    if token is None:
        return "its agent token could not be opened at controller start"
    vm.token = token
    return None
