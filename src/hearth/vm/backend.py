"""The Protocol every VM backend (QEMU, Firecracker) implements."""

from __future__ import annotations

from typing import Protocol

from hearth.images.manifest import ImageDir
from hearth.vm.types import Vm, VmSpec


class VmBackend(Protocol):
    """Creates, watches and destroys VMs of one VMM."""

    name: str

    async def create(self, image: ImageDir, spec: VmSpec, *, vm_id: str | None = None) -> Vm:
        """Start a VM from ``image`` and return it once its agent is healthy and claimed."""
        ...

    async def destroy(self, vm: Vm) -> None:
        """Tear the VM down, idempotently, leaving no process, disk, socket or network behind."""
        ...

    async def pause(self, vm: Vm) -> None:
        """Stop the VM's vCPUs, keeping its memory."""
        ...

    async def resume(self, vm: Vm) -> None:
        """Continue a paused VM."""
        ...

    async def list_running(self) -> list[Vm]:
        """Every VM of this backend whose process is alive (for reconciliation)."""
        ...

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The last lines of the VM's serial console."""
        ...
