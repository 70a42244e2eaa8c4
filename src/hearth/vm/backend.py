"""The one seam between the controller and a VMM: every backend (QEMU, Firecracker, the tests'
fake) implements ``VmBackend``, and every caller outside ``hearth.vm`` holds one only as that."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypedDict, Unpack, runtime_checkable

from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.types import BootMode, Vm, VmSpec, VmState, Volume


class CreateOptions(TypedDict, total=False):
    """The keyword options of ``VmBackend.create``, written once for the Protocol and every
    backend; an option left out (or None) takes the default its comment names."""

    vm_id: str | None  # the VM's id; default: a fresh one
    boot_mode: BootMode | None  # COLD: never restore; default: restore when there is a template
    claim: bool  # default True; False leaves the VM unclaimed (a warm-pool VM)


@runtime_checkable
class VmBackend(Protocol):
    """Creates, watches and destroys VMs of one VMM."""

    name: str
    accel: Accel
    # Whether ``hibernate`` and ``wake`` work (else they raise NotSupported): the control plane
    # refuses a lifetime whose action is hibernate up front where they do not.
    can_hibernate: bool

    async def create(self, image: ImageDir, spec: VmSpec, **options: Unpack[CreateOptions]) -> Vm:
        """Start a VM from ``image`` (restored from a template unless ``boot_mode`` is COLD or
        there is none) and return it ready: its agent healthy and, with ``claim``, claimed with a
        token of its own. Without ``claim`` (warm-pool VMs) the VM carries no token until
        ``claim``. On any failure nothing of the VM is left and the error says why."""
        ...

    async def claim(self, vm: Vm) -> str:
        """Claim an unclaimed VM's agent with a fresh token (also reseeding its randomness and
        setting its clock); returns the token. VmError when it already has one."""
        ...

    async def prepare(self, image: ImageDir, spec: VmSpec) -> None:
        """Make sure VMs of ``spec`` from ``image`` can be restored from a template: build it
        now if it is missing or stale (the image changed), so no create waits for it; a no-op
        for a backend without templates."""
        ...

    def alive(self, vm: Vm) -> bool:
        """True while the VM's VMM process runs."""
        ...

    async def wait_exit(self, vm: Vm) -> None:
        """Return once the VM's VMM process has exited (at once for a VM not running)."""
        ...

    async def pause(self, vm: Vm) -> None:
        """Stop the VM's vCPUs, keeping its memory."""
        ...

    async def resume(self, vm: Vm) -> None:
        """Continue a paused VM."""
        ...

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """Save a ready or paused VM's memory and device state to disk, encrypted under
        ``state_key`` (the caller's, kept sealed before the save begins, so that a save cut
        short by the caller's end can still be woken), and end its VMM process; its disk and
        work dir stay. A save that fails leaves the VM as it was. NotSupported where the VMM
        cannot."""
        ...

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """Start hibernated ``vm`` (its id, spec, work dir, disk key and token as the caller
        keeps them) from its saved state, and return it ready, with new addresses; the saved
        state is dropped once it is in. SavedStateCorrupt when it is missing or does not open
        (the VM's files kept aside, the message says where); other failures leave it
        hibernated."""
        ...

    async def settle_wake(self, vm: Vm) -> VmState:
        """A wake of ``vm`` that its controller did not see through (it died): ``HIBERNATED``
        when the saved state is still there (its VMM, if any, ended: the guest never ran);
        ``PAUSED`` when the state was consumed and its VMM runs (now stopped, to be resumed);
        ``FAILED`` when the state was consumed and its VMM is gone."""
        ...

    async def create_volume(self, path: Path, size_mib: int, key: bytes) -> None:
        """Create a blank volume file of ``size_mib`` at ``path``, encrypted under ``key`` (the
        guest formats it). NotSupported where the VMM cannot attach volumes."""
        ...

    async def prepare_volumes(self, directory: Path, size_mib: int) -> None:
        """Make the next ``create_volume`` of ``size_mib`` in ``directory`` fast (QEMU: its
        encrypted prototype is made now); a no-op where there is nothing to prepare."""
        ...

    async def attach_volume(self, vm: Vm, volume: Volume) -> str | None:
        """Give running ``vm`` the disk ``volume`` (appended to ``vm.volumes``): the serial its
        guest now finds it by (None: the tests' fake, whose VMs have no disks). NotSupported
        where the VMM cannot."""
        ...

    async def destroy(self, vm: Vm) -> None:
        """Tear the VM down, idempotently, leaving no process, disk, socket or network behind."""
        ...

    async def list_running(self) -> list[Vm]:
        """Every VM of this backend whose process is alive (for reconciliation)."""
        ...

    async def reap(self, keep: set[str]) -> list[str]:
        """Destroy every VM and leftover resource of this backend whose VM id is not in
        ``keep``; returns what was removed."""
        ...

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The last lines of the VM's serial console."""
        ...

    def leftovers(self) -> list[str]:
        """What this backend still holds on the host, each thing in a short sentence: VMM
        processes started from its state dir, VM work dirs, control sockets, claimed network
        slots. Read from the host where the backend can (so a fresh backend on the same state
        dir sees what an earlier one left), and held by live VMs too: empty once every VM is
        destroyed. It only reports; ``reap`` and ``destroy`` remove."""
        ...
