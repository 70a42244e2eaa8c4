"""The one seam between the controller and a VMM: every backend (QEMU, Firecracker, the tests'
fake) implements ``VmBackend``, and every caller outside ``hearth.vm`` holds one only as that."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.types import BootMode, Vm, VmSpec


@runtime_checkable
class VmBackend(Protocol):
    """Creates, watches and destroys VMs of one VMM."""

    name: str
    accel: Accel

    async def create(
        self,
        image: ImageDir,
        spec: VmSpec,
        *,
        vm_id: str | None = None,
        boot_mode: BootMode | None = None,
        claim: bool = True,
    ) -> Vm:
        """Start a VM from ``image`` (restored from a template unless ``boot_mode`` is COLD or
        there is none) and return it ready: its agent healthy and, with ``claim``, claimed with a
        token of its own. Without ``claim`` (warm-pool VMs) the VM carries no token until
        ``claim``. On any failure nothing of the VM is left and the error says why."""
        ...

    async def claim(self, vm: Vm) -> str:
        """Claim an unclaimed VM's agent with a fresh token (also reseeding its randomness and
        setting its clock); returns the token. VmError when it already has one."""
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
