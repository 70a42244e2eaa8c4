"""Both backends start a VM as restored when it comes from a template and as cold-booted when
none is given (the shared ``BackendLifecycle._new_vm``), with their name and work dir; no VM
boots: each start is stopped at its first step that would reach beyond this process."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from hearth.errors import VmError
from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.firecracker.backend import FirecrackerBackend
from hearth.vm.firecracker.disks import CowMechanism
from hearth.vm.firecracker.network import FirecrackerNetwork
from hearth.vm.firecracker.records import VmFiles, VmRecord
from hearth.vm.firecracker.templates import FcTemplate
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.templates import Template
from hearth.vm.types import BootMode, GuestForward, Vm, VmSpec

VM_ID = "vm-b007"


class RecordReadingNetworks:
    """A NetworkProvider that reads the VM's record when asked for a network, then refuses."""

    def __init__(self, vms_dir: Path) -> None:
        self.vms_dir = vms_dir
        self.records: list[VmRecord | None] = []

    async def acquire(
        self, vm_id: str, *, allow_egress: bool, forwards: tuple[GuestForward, ...] = ()
    ) -> FirecrackerNetwork:
        self.records.append(VmRecord.read(VmFiles(workdir=self.vms_dir / vm_id)))
        raise VmError("no network in this test")

    async def release(self, network: FirecrackerNetwork) -> None:
        """Nothing was acquired."""

    async def reap(self, keep: set[str]) -> list[str]:
        return []


@pytest.mark.parametrize(
    ("from_template", "mode"), [(True, BootMode.RESTORE), (False, BootMode.COLD)]
)
async def test_firecracker_records_how_its_vm_starts(
    tmp_path: Path, from_template: bool, mode: BootMode
) -> None:
    binary = tmp_path / "bin" / "firecracker"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    networks = RecordReadingNetworks(tmp_path / "state" / "vms")
    backend = FirecrackerBackend(
        state_dir=tmp_path / "state",
        networks=networks,
        firecracker=str(binary),
        accel=Accel("kvm", "test"),
        cow=CowMechanism.REFLINK_COPY,
    )
    template = FcTemplate(key="k", directory=tmp_path / "tpl") if from_template else None

    with pytest.raises(VmError, match="no network"):
        await backend._start(
            VM_ID, ImageDir(tmp_path / "image"), VmSpec(), template=template, claim=False
        )

    [record] = networks.records
    assert record is not None
    assert record.boot_mode == mode.value
    assert not (backend.vms_dir / VM_ID).exists()  # abandoned: nothing left


class LaunchRefused(QemuBackend):
    """The real QEMU backend up to its launch, which notes the VM it was given and refuses."""

    launched: list[Vm]

    async def _launch(  # what else the launch is given is not looked at
        self, vm: Vm, *args: object, **kwargs: object
    ) -> asyncio.subprocess.Process:
        self.launched.append(vm)
        raise VmError("no launch in this test")


@pytest.mark.parametrize(
    ("from_template", "mode"), [(True, BootMode.RESTORE), (False, BootMode.COLD)]
)
async def test_qemu_marks_how_its_vm_starts(
    tmp_path: Path, from_template: bool, mode: BootMode
) -> None:
    backend = LaunchRefused(
        state_dir=tmp_path / "state",
        run_dir=tmp_path / "run",
        accel=Accel("tcg", "test"),
        encrypt_disks=False,  # LUKS key derivation takes seconds; how the VM starts is the same
    )
    backend.launched = []
    image = ImageDir(tmp_path / "image")
    image.path.mkdir()
    image.rootfs.write_bytes(b"G" * 1024 * 1024)
    template = Template(key="k", directory=tmp_path / "tpl") if from_template else None
    if template is not None:
        template.directory.mkdir()
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", str(template.overlay), "1M"]
        await asyncio.to_thread(subprocess.run, argv, check=True)

    with pytest.raises(VmError, match="no launch"):
        await backend._start(VM_ID, image, VmSpec(), template=template, claim=False)

    [vm] = backend.launched
    assert vm.boot_mode is mode
    assert vm.backend == "qemu"
    assert vm.id == VM_ID
    assert vm.workdir == backend.vms_dir / VM_ID
    assert not vm.workdir.exists()  # abandoned: nothing left
