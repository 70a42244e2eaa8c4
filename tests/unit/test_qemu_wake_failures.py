"""A QEMU wake that cannot go through says why at once: a work dir that is gone fails the VM
with ``saved_state_corrupt``; a QEMU that exits before its saved state came in is reported with
the end of its stderr long before the restore deadline, and the VM stays hibernated. No VM
boots: the QEMU started here exits as it fails to open its disk, which is not there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hearth.errors import SavedStateCorrupt, VmProcessExited
from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.hibernation import DiskLayer
from hearth.vm.qemu.records import write_record
from hearth.vm.qemu.saved_state import StateWriter, new_state_key
from hearth.vm.saved_files import state_path
from hearth.vm.types import BootMode, Vm, VmSpec, VmState

RESTORE_DEADLINE_S = 15.0


def qemu_backend(tmp_path: Path) -> QemuBackend:
    """A QEMU backend on a private state dir (TCG: no accelerator is probed)."""
    return QemuBackend(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        accel=Accel("tcg", "test"),
        restore_deadline_s=RESTORE_DEADLINE_S,
    )


def hibernated(workdir: Path) -> Vm:
    """The VM whose work dir is ``workdir``, as a wake gets it: hibernated."""
    return Vm(
        id=workdir.name,
        spec=VmSpec(),
        backend="qemu",
        state=VmState.HIBERNATED,
        boot_mode=BootMode.WAKE,
        workdir=workdir,
    )


async def test_a_wake_whose_work_dir_is_gone_fails_the_vm_as_saved_state_corrupt(
    tmp_path: Path,
) -> None:
    backend = qemu_backend(tmp_path)
    backend.vms_dir.mkdir(parents=True)
    vm = hibernated(backend.vms_dir / "vm-gone")

    with pytest.raises(SavedStateCorrupt) as raised:
        await backend.wake(vm, new_state_key())

    assert raised.value.code == "saved_state_corrupt"
    assert "is missing" in raised.value.message
    assert f"its work dir {backend.vms_dir / 'vm-gone'} is gone" in raised.value.message
    assert vm.state is VmState.FAILED  # nothing is left to wake
    assert not any((tmp_path / "state" / "kept").iterdir())


async def test_a_wake_whose_qemu_exits_at_once_says_why_without_waiting_out_the_deadline(
    tmp_path: Path,
) -> None:
    backend = qemu_backend(tmp_path)
    vm = hibernated(backend.vms_dir / "vm-x")
    assert vm.workdir is not None
    vm.workdir.mkdir(parents=True)
    key = new_state_key()
    writer = StateWriter(state_path(vm.workdir), key)
    writer.write(b"x" * 100)
    writer.finish()
    # Its record names pinned layers; its own disk layer is missing, so QEMU exits on start.
    pinned = vm.workdir / "pinned"
    paths = VmPaths(workdir=vm.workdir, run_dir=backend.run_dir, vm_id=vm.id)
    layers = (DiskLayer(pinned / "layer-0.raw", "raw"),)
    write_record(vm, paths, None, None, image=ImageDir(pinned), layers=layers)

    started = time.monotonic()
    with pytest.raises(VmProcessExited) as raised:
        await backend.wake(vm, key)
    took = time.monotonic() - started

    assert took < RESTORE_DEADLINE_S / 2, f"waited {took:.1f} s for a QEMU that had exited"
    message = raised.value.message
    assert "VM vm-x exited with status" in message
    assert "before its saved state came in" in message
    assert "Could not open" in message  # QEMU's own words, from its stderr
    # Nothing of the saved state was read: the VM stays hibernated, its state file kept.
    assert vm.state is VmState.HIBERNATED
    assert state_path(vm.workdir).is_file()
    assert vm.pid is None
    assert not paths.migration.exists()
