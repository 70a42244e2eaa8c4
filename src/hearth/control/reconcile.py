"""Reconciliation: rows and running VMs made to agree when the controller (re)starts."""

from __future__ import annotations

from hearth.control.vms import ACTIVE, RUNNING, VmService
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.vm.types import Vm, VmSpec, VmState

_log = get_logger("control.reconcile")


async def reconcile(vms: VmService) -> dict[str, list[str]]:
    """Make rows and running VMs agree after a (re)start; run before serving.

    Rows whose VM process is gone become ``failed``; VMs that were still booting when the
    controller died are destroyed and failed (nobody waits for them any more); ready and
    paused VMs with a live process and an agent token and keys that open are adopted (a CLI
    VM's egress path reopened where its VMM dials it), and one that was being hibernated is
    adopted paused (its save ended with the controller); hibernated VMs are left as they are;
    processes, work dirs, namespaces and network slots with no active row are destroyed.
    """
    report: dict[str, list[str]] = {"failed": [], "adopted": [], "reaped": [], "hibernated": []}
    running = {vm.id: vm for vm in await vms.node.list_running()}
    for record in await vms.store.vms.list(statuses=ACTIVE):
        vm = running.get(record.id)
        if record.status is VmState.HIBERNATED:
            report["hibernated"].append(record.id)  # nothing runs; its files stay
            continue
        reason = await _adoptable(vms, record, vm)
        if vm is not None and reason is None:
            if record.status is VmState.HIBERNATING:
                # The controller died while saving it: its QEMU still holds it, stopped.
                record = await vms.store.vms.transition(
                    record.id, VmState.HIBERNATING, VmState.PAUSED
                )
            vm.state = VmState.PAUSED if record.status is VmState.PAUSED else VmState.READY
            vm.spec = VmSpec(
                vm_type=record.vm_type,
                vcpus=record.vcpus,
                mem_mib=record.mem_mib,
                network=vm.spec.network,
            )
            vms.live[record.id] = vm
            if vms.networks is not None:
                await vms.networks.reopen(record.id)
            report["adopted"].append(record.id)
            continue
        failed = await vms.store.vms.transition(
            record.id, record.status, VmState.FAILED, error=reason
        )
        vms.metrics.failures.labels(stage="restart").inc()
        await vms.announce(EventType.VM_FAILED, failed, stage="restart", error=reason)
        report["failed"].append(record.id)
    report["reaped"] = await vms.node.reap(keep={*vms.live, *report["hibernated"]})
    if vms.networks is not None:
        await vms.networks.forget_others(keep=set(vms.live))
    _log.info("reconciled", **{k: len(v) for k, v in report.items()})
    return report


async def _adoptable(vms: VmService, record: VmRecord, vm: Vm | None) -> str | None:
    """Why the running ``vm`` of ``record`` cannot be adopted (None: it can, and it holds
    its agent token again)."""
    if vm is None:
        return "VM process gone at controller start"
    if record.status not in (*RUNNING, VmState.HIBERNATING):
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
