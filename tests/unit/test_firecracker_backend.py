"""FirecrackerBackend without a VMM: host checks, input checks, teardown and reconciliation.

A stand-in process (Python through a link named ``firecracker``, with Firecracker's arguments)
plays the VMM where a PID is needed; disks are real reflink copies and networks come from a
recording provider (or the real slot pool with namespace deletion recorded), so the LIFO teardown
is exercised on real files and processes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hearth.errors import ConfigError, NotAnImage, ToolMissing, VmError
from hearth.images.manifest import ImageDir
from hearth.network import namespace
from hearth.network.namespace import NetworkSlot, names_for
from hearth.tools import run_tool
from hearth.vm.accel import Accel
from hearth.vm.firecracker import disks
from hearth.vm.firecracker.backend import FirecrackerBackend
from hearth.vm.firecracker.disks import CowMechanism, create_cow_disk
from hearth.vm.firecracker.network import FirecrackerNetwork, SlotNetworks
from hearth.vm.firecracker.process import is_our_process
from hearth.vm.firecracker.records import VmFiles, VmRecord
from hearth.vm.types import BootMode, GuestForward, NetworkMode, Vm, VmSpec, VmState
from tests.processes import until_args_show

VM_ID = "vm-5eed"


class RecordingNetworks:
    """A NetworkProvider that hands out a fixed network and records what happens to it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def acquire(
        self, vm_id: str, *, allow_egress: bool, forwards: tuple[GuestForward, ...] = ()
    ) -> FirecrackerNetwork:
        self.events.append(f"acquire {vm_id}")
        return FirecrackerNetwork(netns="hearth-5eed", agent_host="169.254.0.6")

    async def release(self, network: FirecrackerNetwork) -> None:
        self.events.append(f"release {network.netns}")

    async def reap(self, keep: set[str]) -> list[str]:
        self.events.append(f"reap all but {sorted(keep)}")
        return []


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    """An executable named firecracker: enough for the constructor's check, never started."""
    path = tmp_path / "bin" / "firecracker"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def networks() -> RecordingNetworks:
    """The recording provider."""
    return RecordingNetworks()


@pytest.fixture
def backend(tmp_path: Path, binary: Path, networks: RecordingNetworks) -> FirecrackerBackend:
    """A backend whose host checks pass."""
    return FirecrackerBackend(
        state_dir=tmp_path / "state",
        networks=networks,
        firecracker=str(binary),
        accel=Accel("kvm", "test"),
        cow=CowMechanism.REFLINK_COPY,
    )


async def start_stand_in(tmp_path: Path) -> asyncio.subprocess.Process:
    """A process that looks like VM_ID's Firecracker in /proc."""
    link = tmp_path / "fc" / "firecracker"
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(sys.executable)
    proc = await asyncio.create_subprocess_exec(
        str(link), "-c", "import time; time.sleep(60)", "--api-sock", "api.sock", "--id", VM_ID
    )
    until_args_show(proc.pid, VM_ID)
    return proc


def write_vm(backend: FirecrackerBackend, tmp_path: Path, pid: int) -> Vm:
    """A VM as ``_start`` leaves it on disk: record, COW disk, network."""
    workdir = backend.vms_dir / VM_ID
    workdir.mkdir(parents=True)
    golden = tmp_path / "golden.ext4"
    golden.write_bytes(b"G" * 8192)
    disk = create_cow_disk(golden, workdir=workdir, name=VM_ID, mechanism=CowMechanism.REFLINK_COPY)
    record = VmRecord(
        id=VM_ID,
        vm_type="cli",
        vcpus=1,
        mem_mib=256,
        boot_mode="restore",
        created_at=1.0,
        root=str(workdir),
        pid=pid,
        network=FirecrackerNetwork(netns="hearth-5eed", agent_host="169.254.0.6").to_dict(),
        disk=disk.to_dict(),
    )
    files = VmFiles(workdir=workdir)
    record.write(files)
    files.console.write_text("boot line 1\nhearth-init: starting agent\n")
    return Vm(
        id=VM_ID,
        spec=VmSpec(vcpus=1, mem_mib=256, network=NetworkMode.NETNS),
        backend="firecracker",
        state=VmState.READY,
        workdir=workdir,
        pid=pid,
    )


def test_the_constructor_refuses_a_host_without_kvm(tmp_path: Path, binary: Path) -> None:
    with pytest.raises(ConfigError, match="needs a usable /dev/kvm: kvm_pvm"):
        FirecrackerBackend(
            state_dir=tmp_path,
            networks=RecordingNetworks(),
            firecracker=str(binary),
            accel=Accel("tcg", "kvm_pvm"),
        )


def test_the_constructor_refuses_a_host_without_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="firecracker is not installed"):
        FirecrackerBackend(
            state_dir=tmp_path, networks=RecordingNetworks(), accel=Accel("kvm", "test")
        )


async def test_create_refuses_user_networking_and_images_without_vmlinux(
    backend: FirecrackerBackend, tmp_path: Path
) -> None:
    image = ImageDir(tmp_path / "image")
    with pytest.raises(VmError, match="'netns' only"):
        await backend.create(image, VmSpec(network=NetworkMode.USER))
    with pytest.raises(NotAnImage, match="vmlinux is missing"):
        await backend.create(image, VmSpec(network=NetworkMode.NETNS))


async def test_list_running_finds_a_live_vm_again_from_its_record(
    backend: FirecrackerBackend, tmp_path: Path
) -> None:
    proc = await start_stand_in(tmp_path)
    try:
        write_vm(backend, tmp_path, proc.pid)
        (found,) = await backend.list_running()
        assert found.id == VM_ID
        assert found.pid == proc.pid
        assert found.state is VmState.READY
        assert found.boot_mode is BootMode.RESTORE
        assert found.agent_url == "http://169.254.0.6:8080"
        assert found.token is None
        assert "starting agent" in backend.console_tail(found)
    finally:
        proc.kill()
        await proc.wait()
    assert await backend.list_running() == []


async def test_destroy_stops_the_process_and_removes_everything_once(
    backend: FirecrackerBackend, networks: RecordingNetworks, tmp_path: Path
) -> None:
    proc = await start_stand_in(tmp_path)
    vm = write_vm(backend, tmp_path, proc.pid)
    cow = vm.workdir / "disk.cow" if vm.workdir else None
    await backend.destroy(vm)
    assert await asyncio.wait_for(proc.wait(), 5) is not None
    assert not is_our_process(proc.pid, VM_ID)
    assert cow is not None
    assert not cow.exists()
    assert networks.events == ["release hearth-5eed"]
    assert vm.workdir is not None
    assert not vm.workdir.exists()
    assert vm.state is VmState.DESTROYED
    await backend.destroy(vm)  # idempotent
    assert networks.events == ["release hearth-5eed"]


async def test_teardown_after_a_half_finished_create_releases_what_was_recorded(
    backend: FirecrackerBackend, networks: RecordingNetworks
) -> None:
    """A record with only a network (the process never started) is torn down cleanly."""
    workdir = backend.vms_dir / VM_ID
    workdir.mkdir(parents=True)
    VmRecord(
        id=VM_ID, vm_type="cli", vcpus=1, mem_mib=256, boot_mode="cold", created_at=1.0,
        root=str(workdir),
        network=FirecrackerNetwork(netns="hearth-5eed", agent_host="169.254.0.18").to_dict(),
    ).write(VmFiles(workdir=workdir))  # fmt: skip
    vm = Vm(id=VM_ID, spec=VmSpec(network=NetworkMode.NETNS), backend="firecracker",
            workdir=workdir, state=VmState.FAILED)  # fmt: skip
    await backend.destroy(vm)
    assert networks.events == ["release hearth-5eed"]
    assert not workdir.exists()


def test_the_default_network_provider_is_hearth_networks_slot_pool(
    tmp_path: Path, binary: Path
) -> None:
    backend = FirecrackerBackend(
        state_dir=tmp_path / "state",
        network_pool="169.254.0.0/24",
        firecracker=str(binary),
        accel=Accel("kvm", "test"),
    )
    assert isinstance(backend.networks, SlotNetworks)
    assert backend.networks.pool.claims_dir == tmp_path / "state" / "net" / "slots"
    assert str(backend.networks.pool.network) == "169.254.0.0/24"
    assert backend.networks.tap_owner is None


async def test_teardown_after_a_restart_deletes_the_namespace_and_frees_the_slot(
    tmp_path: Path, binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new backend (the controller restarted) finds the slot in the record and frees it."""
    deleted: list[NetworkSlot] = []
    monkeypatch.setattr(namespace, "delete_namespace", deleted.append)
    backend = FirecrackerBackend(
        state_dir=tmp_path / "state", firecracker=str(binary), accel=Accel("kvm", "test")
    )
    assert isinstance(backend.networks, SlotNetworks)
    pool = backend.networks.pool
    slot = pool.claim(VM_ID)
    netns, host_veth = names_for(VM_ID)
    network = FirecrackerNetwork.from_slot(
        NetworkSlot(netns=netns, host_veth=host_veth, slot=slot), owner=VM_ID
    )
    workdir = backend.vms_dir / VM_ID
    workdir.mkdir(parents=True)
    VmRecord(
        id=VM_ID, vm_type="cli", vcpus=1, mem_mib=256, boot_mode="cold", created_at=1.0,
        root=str(workdir), network=network.to_dict(),
    ).write(VmFiles(workdir=workdir))  # fmt: skip
    vm = Vm(id=VM_ID, spec=VmSpec(network=NetworkMode.NETNS), backend="firecracker",
            workdir=workdir, state=VmState.FAILED)  # fmt: skip
    await backend.destroy(vm)
    assert deleted == [NetworkSlot(netns="hearth-5eed", host_veth="hv5eed", slot=slot)]
    assert pool.claims() == {}
    assert not workdir.exists()


class HeldDevices:
    """``run_tool`` for the disks: losetup runs for real (real loop devices); dmsetup, which
    this kernel cannot serve, is played (its node a file in ``mapper``), and its ``create``
    holds the worker thread until ``go`` is set. Every device step lands in ``events``."""

    def __init__(self, events: list[str], mapper: Path) -> None:
        self.events = events
        self.mapper = mapper
        self.creating = threading.Event()
        self.go = threading.Event()
        self.loops: list[str] = []

    def run(self, args: Sequence[str | Path], **options: Any) -> subprocess.CompletedProcess[bytes]:
        argv = [str(a) for a in args]
        if argv[0] == "dmsetup":
            self.events.append(f"dm {argv[1]} {argv[-1] if argv[1] == 'remove' else argv[2]}")
            if argv[1] == "create":
                self.creating.set()
                self.go.wait(10)
                (self.mapper / argv[2]).touch()
            else:
                (self.mapper / argv[-1]).unlink()
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        result = run_tool(args, **options)
        if argv[:3] == ["losetup", "--find", "--show"]:
            self.loops.append(result.stdout.decode().strip())
            self.events.append(f"attach {self.loops[-1]}")
        elif argv[:2] == ["losetup", "-d"]:
            self.events.append(f"detach {argv[2]}")
        return result


def backing_file(loop: str) -> Path:
    """Where the kernel says what a loop device is attached to (absent once detached)."""
    return Path("/sys/block") / Path(loop).name / "loop" / "backing_file"


@pytest.fixture
def held_devices(
    tmp_path: Path, networks: RecordingNetworks, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HeldDevices]:
    """The dm-snapshot mechanism with real loop devices and a played device-mapper; whatever
    loop device a failing test leaves is detached afterwards."""
    probe = subprocess.run(["losetup", "--find"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("needs root and a free loop device")
    devices = HeldDevices(networks.events, tmp_path / "mapper")
    devices.mapper.mkdir()
    monkeypatch.setattr(disks, "MAPPER_DIR", devices.mapper)
    monkeypatch.setattr(disks, "dm_snapshot_unavailable", lambda: None)
    monkeypatch.setattr(disks, "run_tool", devices.run)
    yield devices
    devices.go.set()
    for loop in devices.loops:
        if backing_file(loop).exists() and str(tmp_path) in backing_file(loop).read_text():
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


async def test_a_create_cancelled_during_disk_setup_removes_the_devices_it_made(
    tmp_path: Path, binary: Path, networks: RecordingNetworks, held_devices: HeldDevices
) -> None:
    """The thread cannot be stopped: the cancel waits for it, then the dm device and both loop
    devices it made go (newest first, before the network), and the cancel still propagates."""
    backend = FirecrackerBackend(
        state_dir=tmp_path / "state", networks=networks, firecracker=str(binary),
        accel=Accel("kvm", "test"), cow=CowMechanism.DM_SNAPSHOT, use_templates=False,
    )  # fmt: skip
    image = ImageDir(tmp_path / "image")
    image.path.mkdir()
    image.vmlinux.write_bytes(b"K")
    image.rootfs.write_bytes(b"G" * 1024 * 1024)
    spec = VmSpec(network=NetworkMode.NETNS)
    creating = asyncio.create_task(backend.create(image, spec, vm_id=VM_ID))
    assert await asyncio.to_thread(held_devices.creating.wait, 10)
    creating.cancel()
    await asyncio.wait([creating], timeout=0.2)  # the old code ended here, the thread still held
    held_devices.go.set()
    with pytest.raises(asyncio.CancelledError):
        await creating
    origin, cow = held_devices.loops
    assert networks.events == [
        f"acquire {VM_ID}", f"attach {origin}", f"attach {cow}", f"dm create hearth-{VM_ID}",
        f"dm remove hearth-{VM_ID}", f"detach {cow}", f"detach {origin}", "release hearth-5eed",
    ]  # fmt: skip
    assert not backing_file(origin).exists()
    assert not backing_file(cow).exists()
    assert list(held_devices.mapper.iterdir()) == []
    assert not (backend.vms_dir / VM_ID).exists()
