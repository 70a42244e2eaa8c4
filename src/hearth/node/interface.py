"""``Node``: the small interface the control plane holds a host that runs VMs by."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from hearth.agent_bundle import AgentBundle
from hearth.node.egress import EgressPath
from hearth.node.images import ImageStatus
from hearth.vm.accel import Accel
from hearth.vm.types import Vm, VmSpec, VmState, VmType, Volume


class Node(Protocol):
    """Runs, watches and ends VMs on one host; resolves the image of each VM type itself."""

    @property
    def vmm(self) -> str:
        """The VMM this node runs VMs with ("qemu", "firecracker", …)."""
        ...

    @property
    def accel(self) -> Accel:
        """The accelerator its VMM uses, and why."""
        ...

    @property
    def can_hibernate(self) -> bool:
        """Whether its VMM can hibernate VMs (save them to disk and wake them)."""
        ...

    def check_image(self, vm_type: VmType) -> None:
        """Raise ImageNotBuilt (naming the command that builds it) when no image serves
        ``vm_type``; the control plane asks before it admits a VM."""
        ...

    def images_status(self) -> dict[str, ImageStatus]:
        """Per VM type: the image in use, or why there is none."""
        ...

    async def create(self, spec: VmSpec, *, vm_id: str) -> Vm:
        """Boot a VM of ``spec`` with id ``vm_id``, ready and claimed (its own token set)."""
        ...

    def alive(self, vm: Vm) -> bool:
        """True while the VM's VMM process runs."""
        ...

    async def pause(self, vm: Vm) -> None:
        """Stop the VM's vCPUs, keeping its memory."""
        ...

    async def resume(self, vm: Vm) -> None:
        """Continue a paused VM."""
        ...

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """Save the VM to disk, encrypted under ``state_key``, and end its VMM."""
        ...

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """Start a hibernated VM from its saved state, ready."""
        ...

    async def settle_wake(self, vm: Vm) -> VmState:
        """Where a wake the controller did not see through left ``vm`` (see VmBackend)."""
        ...

    async def create_volume(self, name: str, size_mib: int, key: bytes) -> Path:
        """Create the blank encrypted volume ``name`` of ``size_mib`` in the node's volume
        dir; its path."""
        ...

    async def prepare_volumes(self, size_mib: int) -> None:
        """Make creating a volume of ``size_mib`` fast from now on (done ahead, at start)."""
        ...

    def remove_volume(self, name: str) -> bool:
        """Remove volume ``name``'s file; whether there was one."""
        ...

    def reap_volumes(self, keep: set[str]) -> list[str]:
        """Remove every volume file not named in ``keep``, and volume prototypes' scratch files;
        the names removed."""
        ...

    def volume_path(self, name: str) -> Path:
        """Where volume ``name`` lives on the node."""
        ...

    async def attach_volume(self, vm: Vm, volume: Volume) -> str | None:
        """Give running ``vm`` the disk ``volume``: the serial its guest finds it by, if any."""
        ...

    async def destroy(self, vm: Vm) -> None:
        """Tear the VM down, idempotently, leaving nothing behind."""
        ...

    async def list_running(self) -> list[Vm]:
        """Every VM of this node whose VMM process is alive (for reconciliation)."""
        ...

    async def disk_held(self, workdir: Path) -> int | None:
        """The bytes a VM's own files occupy in its work dir ``workdir`` on this node: its disk
        layer, a hibernated VM's saved state, its logs (not the files it shares with images);
        None when there is no such dir."""
        ...

    async def reap(self, keep: set[str]) -> list[str]:
        """Remove every VM and leftover resource whose VM id is not in ``keep``."""
        ...

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The last lines of the VM's serial console."""
        ...

    async def probe_agent(self, vm: Vm, *, timeout_s: float) -> str:
        """Ask the VM's agent ``/health`` within ``timeout_s``; the version it reports.
        AgentError when it does not answer in time or answers anything but healthy."""
        ...

    async def prepare(self, vm_type: VmType, spec: VmSpec) -> None:
        """Build the restore template of ``spec`` on the image of ``vm_type`` if it is missing
        or stale; ImageNotBuilt when there is no image."""
        ...

    async def install_agent(self, bundle: AgentBundle) -> list[str]:
        """Write ``bundle``'s agent into the images this node boots (each one swapped in
        whole, its restore templates then rebuilt on next use); the images it changed."""
        ...

    async def open_egress(
        self,
        allow: Sequence[str],
        *,
        deny: Sequence[str] = (),
        owner: str | None = None,
        port: int = 0,
    ) -> EgressPath:
        """A way out for a VM to the hosts in ``allow`` but not ``deny``, and nothing else
        (never a private address); the VM's spec must carry its ``forward``, its policy may
        change while it runs, and the caller closes it. ``owner`` is named in its logs.
        ``port``: the node port to listen on (0: any), to reopen the path of a running VM."""
        ...
