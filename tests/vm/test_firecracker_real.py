"""The Firecracker backend for real: cold boot, snapshot → restore, teardown that leaves nothing.

These need the firecracker binary, a /dev/kvm with hardware virtualization (not PVM), root, and
``ip``/``nft`` for each VM's netns (``hearth.network``, as the QEMU backend uses); they skip,
saying which, where any is missing. The image's
Debian cloud kernel builds virtio as modules, so the VMs boot through the image's initramfs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.images.manifest import ImageDir
from hearth.vm.accel import detect_accel
from hearth.vm.firecracker import FirecrackerBackend, SlotNetworks
from hearth.vm.firecracker.process import is_our_process
from hearth.vm.firecracker.records import VmFiles, VmRecord
from hearth.vm.types import BootMode, NetworkMode, Vm, VmSpec, VmState

_ACCEL = detect_accel()
_NET_TOOLS = [t for t in ("ip", "nft") if shutil.which(t, path="/usr/sbin:/sbin") is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vm,
    pytest.mark.skipif(
        shutil.which("firecracker") is None,
        reason="needs the firecracker binary, which cannot be installed on this machine",
    ),
    pytest.mark.skipif(_ACCEL.name != "kvm", reason=f"needs a usable /dev/kvm: {_ACCEL.reason}"),
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(_NET_TOOLS),
        reason=f"needs root and ip/nft for the VMs' netns (missing: {_NET_TOOLS or 'root'})",
    ),
]

SPEC = VmSpec(vcpus=1, mem_mib=512, network=NetworkMode.NETNS)


def auth(token: str | None) -> dict[str, str]:
    """The bearer header of a claimed agent."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[FirecrackerBackend]:
    """A Firecracker backend on a private state dir; teardown destroys whatever is still running."""
    backend = FirecrackerBackend(state_dir=tmp_path / "state", use_initrd=True)
    assert isinstance(backend.networks, SlotNetworks)
    yield backend
    for vm in await backend.list_running():
        print(f"--- console of {vm.id} ---\n{backend.console_tail(vm, 60)}")
        await backend.destroy(vm)
    assert backend.networks.pool.claims() == {}, "network slots left claimed"


def holdings(vm: Vm) -> VmRecord:
    """What the VM holds on the host, from its record."""
    assert vm.workdir is not None
    record = VmRecord.read(VmFiles(workdir=vm.workdir))
    assert record is not None
    return record


def assert_nothing_left(vm: Vm, record: VmRecord) -> None:
    """No process, dm/loop device, COW file, socket, netns, veth or work directory remains."""
    assert record.pid is not None
    assert not is_our_process(record.pid, vm.id)
    disk = record.get_disk()
    assert disk is not None
    assert not disk.cow_file.exists()
    if disk.dm_name:
        assert not (Path("/dev/mapper") / disk.dm_name).exists()
    for loop in disk.loops:
        backing = Path("/sys/block") / Path(loop).name / "loop" / "backing_file"
        assert not backing.exists() or str(disk.cow_file) not in backing.read_text()
    assert not record.api_socket.exists()
    network = record.get_network()
    assert network is not None
    assert not network.netns_path.exists()
    assert network.host_veth is not None
    assert not (Path("/sys/class/net") / network.host_veth).exists()
    assert vm.workdir is not None
    assert not vm.workdir.exists()


async def test_cold_boot_reaches_a_healthy_claimed_agent(
    minimal_image: ImageDir, backend: FirecrackerBackend
) -> None:
    vm = await backend.create(minimal_image, SPEC, boot_mode=BootMode.COLD)
    print(f"cold boot to healthy: {vm.time_to_healthy_s:.2f} s")
    assert vm.state is VmState.READY
    assert vm.boot_mode is BootMode.COLD
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{vm.agent_url}/health")).status_code == 200
        version = await client.get(f"{vm.agent_url}/version", headers=auth(vm.token))
        assert version.status_code == 200
    record = holdings(vm)
    await backend.destroy(vm)
    assert_nothing_left(vm, record)


async def test_snapshot_restore_gives_healthy_clones_with_their_own_tokens(
    minimal_image: ImageDir, backend: FirecrackerBackend
) -> None:
    first = await backend.create(minimal_image, SPEC)  # builds the template, then restores
    second = await backend.create(minimal_image, SPEC)
    print(f"restore to healthy: {second.time_to_healthy_s:.2f} s")
    assert first.boot_mode is BootMode.RESTORE
    assert second.boot_mode is BootMode.RESTORE
    assert first.token != second.token
    async with httpx.AsyncClient() as client:
        for vm in (first, second):
            ok = await client.get(f"{vm.agent_url}/version", headers=auth(vm.token))
            assert ok.status_code == 200
        foreign = await client.get(f"{first.agent_url}/version", headers=auth(second.token))
        assert foreign.status_code == 401
    await backend.pause(first)
    assert first.state is VmState.PAUSED
    await backend.resume(first)
    records = [holdings(vm) for vm in (first, second)]
    await asyncio.gather(*(backend.destroy(vm) for vm in (first, second)))
    for vm, record in zip((first, second), records, strict=True):
        assert_nothing_left(vm, record)


async def test_destroy_is_idempotent_and_leaves_nothing(
    minimal_image: ImageDir, backend: FirecrackerBackend
) -> None:
    vm = await backend.create(minimal_image, SPEC, boot_mode=BootMode.COLD)
    record = holdings(vm)
    await backend.destroy(vm)
    await backend.destroy(vm)
    assert vm.state is VmState.DESTROYED
    assert_nothing_left(vm, record)
    assert await backend.list_running() == []
