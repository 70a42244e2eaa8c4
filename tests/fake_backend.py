"""``FakeBackend``: a ``VmBackend`` in memory, for tests of the code above the VM seam.

Its VMs are records in a dict: ready at once (or when ``hold`` is set), "claimed" with a token
of their own, alive until destroyed or ``kill``-ed. They have no agent: tests of what needs one
(the auth flow's stages) give the fake an agent of their own. The contract suite
(``tests/contract``) holds it to the same rules as the real backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import time
from pathlib import Path

from hearth.errors import InvalidInput, NotSupported, SavedStateCorrupt, VmError
from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.host import bytes_on_disk, new_vm_id
from hearth.vm.types import BootMode, Vm, VmSpec, VmState, VmType, Volume

_DISK = "disk.qcow2"
_STATE = "state.enc"
_EMPTY_LAYER_BYTES = 192 * 1024  # as an empty qcow2 overlay


class FakeBackend:
    """VMs that live in a dict. ``hold`` (when set) makes every create (of ``hold_type`` only,
    when set) wait for it; ``fail_next``
    makes the next create (of ``fail_type`` only, when set) fail with that error; ``kill`` ends
    a VM as a dying VMM would; ``can_hibernate`` set False makes it a VMM that cannot hibernate
    (as Firecracker's backend): its hibernate raises NotSupported. With ``workdirs`` set, each
    VM holds files on the host as a real one does: a work dir with a disk layer that ``grow``
    fills, and while hibernated a saved state of ``state_bytes``."""

    name = "fake"
    accel = Accel("tcg", "fake backend for tests")
    can_hibernate = True  # set False on an instance: hibernate raises NotSupported

    def __init__(self) -> None:
        self.running: dict[str, Vm] = {}
        self.destroyed: list[str] = []
        self.created: list[str] = []
        self.prepared: list[tuple[Path, str]] = []
        self.prepared_volumes: list[tuple[Path, int]] = []
        self.hold: asyncio.Event | None = None
        self.hold_type: VmType | None = None
        self.fail_next: Exception | None = None
        self.fail_type: VmType | None = None
        self._exits: dict[str, asyncio.Event] = {}
        # Hibernated VMs: their saved "state" is the key it was sealed under and the disk key
        # the VM had (a wake with other keys fails as a corrupt state would).
        self.hibernated: dict[str, tuple[bytes, bytes | None]] = {}
        # Volumes made: path → (size, key).
        self.volumes: dict[Path, tuple[int, bytes]] = {}
        # Set to make the next wake find its saved state corrupt.
        self.corrupt_next_wake = False
        # Set to make the next wake read the saved state, then fail with this error (a VMM
        # that dies after the load): the state is spent and the VM lost.
        self.fail_next_wake: Exception | None = None
        # Set to make the next hibernate fail with this error once its VMM has ended, its
        # saved state kept whole (or lost too, with ``lose_failed_save``).
        self.fail_after_save: Exception | None = None
        self.lose_failed_save = False
        # Set to give each VM a work dir here (its files removed when it is destroyed).
        self.workdirs: Path | None = None
        self.state_bytes = 4 * 1024 * 1024

    async def prepare(self, image: ImageDir, spec: VmSpec) -> None:
        """Templates are nothing here: record what was asked."""
        self.prepared.append((image.path, spec.size_key))

    async def create(
        self,
        image: ImageDir,
        spec: VmSpec,
        *,
        vm_id: str | None = None,
        boot_mode: BootMode | None = None,
        claim: bool = True,
    ) -> Vm:
        """A ready VM (after ``hold``, if set); claimed unless ``claim`` is False."""
        vm = Vm(
            id=vm_id or new_vm_id(),
            spec=spec,
            backend=self.name,
            boot_mode=BootMode.COLD if boot_mode is BootMode.COLD else BootMode.RESTORE,
        )
        if vm.id in self.running:
            raise InvalidInput(f"VM {vm.id} already exists")
        self.running[vm.id] = vm
        self._exits[vm.id] = asyncio.Event()
        try:
            vm.move_to(VmState.BOOTING)
            if self.hold is not None and self.hold_type in (None, spec.vm_type):
                await self.hold.wait()
            if self.fail_next is not None and self.fail_type in (None, spec.vm_type):
                error, self.fail_next = self.fail_next, None
                raise error
            if claim:
                vm.token = secrets.token_urlsafe(32)
            vm.disk_key = secrets.token_bytes(32)
            self._make_workdir(vm)
            vm.ready_at = time.time()
            vm.time_to_healthy_s = 0.0
            vm.move_to(VmState.READY)
        except BaseException as exc:
            vm.error = str(exc) or type(exc).__name__
            vm.move_to(VmState.FAILED)
            await self.destroy(vm)
            raise
        self.created.append(vm.id)
        return vm

    async def claim(self, vm: Vm) -> str:
        """A fresh token for an unclaimed VM."""
        if vm.token is not None:
            raise VmError(f"VM {vm.id} is already claimed")
        if not self.alive(vm):
            raise VmError(f"VM {vm.id} is not running")
        vm.token = secrets.token_urlsafe(32)
        return vm.token

    def alive(self, vm: Vm) -> bool:
        """Whether the VM was created and neither destroyed nor killed."""
        return vm.id in self.running

    def kill(self, vm_id: str) -> None:
        """End a VM as a VMM that dies would: no longer alive, its exit seen."""
        vm = self.running.pop(vm_id)
        if vm.state not in (VmState.STOPPING, VmState.DESTROYED, VmState.FAILED):
            vm.error = f"VM {vm_id}: the fake VMM was killed"
            vm.move_to(VmState.FAILED)
        self._exits[vm_id].set()

    async def wait_exit(self, vm: Vm) -> None:
        """Return once the VM is gone."""
        exited = self._exits.get(vm.id)
        if exited is not None:
            await exited.wait()

    async def pause(self, vm: Vm) -> None:
        """Mark the VM paused."""
        self._running(vm).move_to(VmState.PAUSED)

    async def resume(self, vm: Vm) -> None:
        """Mark the VM ready again."""
        self._running(vm).move_to(VmState.READY)

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """Keep the VM as "saved": no longer running, its keys remembered."""
        if not self.can_hibernate:
            raise NotSupported(f"the {self.name} backend cannot hibernate VMs")
        was = self._running(vm).state
        vm.move_to(VmState.HIBERNATING)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            vm.state = was
            raise error
        self.hibernated[vm.id] = (state_key, vm.disk_key)
        if vm.workdir is not None:
            (vm.workdir / _STATE).write_bytes(b"s" * self.state_bytes)
        self.running.pop(vm.id)
        if self.fail_after_save is not None:
            error, self.fail_after_save = self.fail_after_save, None
            if self.lose_failed_save:
                del self.hibernated[vm.id]
            raise error
        if self.hold is not None:  # the VMM has ended; the save is not reported yet
            await self.hold.wait()
        vm.pid = None
        vm.move_to(VmState.HIBERNATED)

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """Running again, if ``state_key`` and the VM's disk key are the ones it was saved
        with; SavedStateCorrupt (the VM failed) otherwise or after ``corrupt_next_wake``;
        ``fail_next_wake`` once the state is read."""
        saved = self.hibernated.get(vm.id)
        corrupt, self.corrupt_next_wake = self.corrupt_next_wake, False
        if saved is None or corrupt or saved != (state_key, vm.disk_key):
            vm.state = VmState.FAILED
            raise SavedStateCorrupt(f"VM {vm.id}: the fake's saved state does not open")
        vm.move_to(VmState.BOOTING)
        del self.hibernated[vm.id]
        if vm.workdir is not None:
            (vm.workdir / _STATE).unlink(missing_ok=True)  # read back in: the disk moves on
        if self.fail_next_wake is not None:
            error, self.fail_next_wake = self.fail_next_wake, None
            vm.state = VmState.FAILED
            raise error
        self.running[vm.id] = vm
        vm.ready_at = time.time()
        vm.move_to(VmState.READY)
        return vm

    async def settle_wake(self, vm: Vm) -> VmState:
        """Hibernated while its saved "state" is kept; else paused if it runs, else failed."""
        if vm.id in self.hibernated:
            self.running.pop(vm.id, None)
            return VmState.HIBERNATED
        if vm.id not in self.running:
            return VmState.FAILED
        self.running[vm.id].state = VmState.PAUSED
        return VmState.PAUSED

    async def create_volume(self, path: Path, size_mib: int, key: bytes) -> None:
        """A file standing for the volume (its size and key remembered)."""
        path.write_bytes(b"")
        self.volumes[path] = (size_mib, key)

    async def prepare_volumes(self, directory: Path, size_mib: int) -> None:
        """Nothing to make: record what was asked."""
        self.prepared_volumes.append((directory, size_mib))

    async def attach_volume(self, vm: Vm, volume: Volume) -> str | None:
        """Attached: appended to the VM's volumes (its key must be the one it was made with);
        None: a fake VM has no disks for its agent to mount."""
        self._running(vm)
        if self.volumes.get(volume.path, (0, None))[1] != volume.key:
            raise VmError(f"volume {volume.path} does not open with that key")
        vm.volumes.append(volume)
        return None

    async def destroy(self, vm: Vm) -> None:
        """Forget the VM (idempotent); every call is recorded."""
        if vm.state is VmState.DESTROYED:
            return
        self.hibernated.pop(vm.id, None)
        if vm.state is not VmState.STOPPING:
            vm.move_to(VmState.STOPPING)
        self.destroyed.append(vm.id)
        self.running.pop(vm.id, None)
        self._remove_workdir(vm.id)
        if vm.id in self._exits:
            self._exits[vm.id].set()
        vm.move_to(VmState.DESTROYED)

    async def list_running(self) -> list[Vm]:
        """The VMs alive now (a fake's VMs do not outlive its process), each a fresh copy
        without its token or volumes: a real backend rebuilds them from its records, which
        hold neither."""
        return [dataclasses.replace(vm, token=None, volumes=[]) for vm in self.running.values()]

    async def reap(self, keep: set[str]) -> list[str]:
        """Destroy every running VM not in ``keep``."""
        reaped = []
        for vm in list(self.running.values()):
            if vm.id not in keep:
                vm.state = VmState.FAILED
                await self.destroy(vm)
                reaped.append(vm.id)
        for vm_id in [v for v in self.hibernated if v not in keep]:
            del self.hibernated[vm_id]
            self._remove_workdir(vm_id)
            self.destroyed.append(vm_id)
            reaped.append(vm_id)
        return sorted(reaped)

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """A fake has no console."""
        return ""

    def leftovers(self) -> list[str]:
        """Every VM it started and has not destroyed, killed ones too (a real VMM's work dir
        stays until destroy). A fake holds nothing on the host: this is its memory, so a fresh
        ``FakeBackend`` reports nothing."""
        destroyed = set(self.destroyed)
        return [
            f"VM {vm_id} was started and not destroyed"
            for vm_id in self._exits
            if vm_id not in destroyed
        ]

    def grow(self, vm_id: str, size_bytes: int) -> None:
        """Write ``size_bytes`` more into the VM's disk layer, as its guest would (``workdirs``)."""
        assert self.workdirs is not None, "grow needs workdirs"
        with (self.workdirs / vm_id / _DISK).open("ab") as disk:
            disk.write(b"d" * size_bytes)

    def _make_workdir(self, vm: Vm) -> None:
        if self.workdirs is None:
            return
        vm.workdir = self.workdirs / vm.id
        vm.workdir.mkdir(parents=True, exist_ok=True)
        (vm.workdir / _DISK).write_bytes(b"d" * _EMPTY_LAYER_BYTES)
        vm.disk_bytes = bytes_on_disk(vm.workdir / _DISK)

    def _remove_workdir(self, vm_id: str) -> None:
        if self.workdirs is not None:
            shutil.rmtree(self.workdirs / vm_id, ignore_errors=True)

    def _running(self, vm: Vm) -> Vm:
        if not self.alive(vm):
            raise VmError(f"VM {vm.id} is not running")
        return vm
