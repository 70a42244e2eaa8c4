"""A VM's volume slot on real QEMU: a volume of the slot's size takes it without a hot-plug, one
of another size is hot-plugged, and the guest mounts either; a volume formatted through the slot
of one clone is found formatted through the slot of the next (the clone's cached zeros of the
template's empty disk are dropped, never taken for a blank workspace)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from hearth.agent_client import AgentClient
from hearth.images.manifest import ImageDir
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.readiness import Deadline
from hearth.vm.types import SLOT_SERIAL, BootMode, Vm, VmSpec, Volume
from tests.vm.conftest import TrackingBackend

pytestmark = [pytest.mark.slow, pytest.mark.vm]

SLOT_MIB = 64


async def _qmp(backend: TrackingBackend, vm: Vm, command: str, **arguments: Any) -> Any:
    assert vm.workdir is not None
    paths = VmPaths(workdir=vm.workdir, run_dir=backend.run_dir, vm_id=vm.id)
    monitor = await Monitor.connect(vm.id, paths.qmp, deadline=Deadline.after(5))
    try:
        return await monitor.execute(command, arguments or None)
    finally:
        await monitor.close()


async def _devices(backend: TrackingBackend, vm: Vm) -> set[str]:
    listed = await _qmp(backend, vm, "qom-list", path="/machine/peripheral")
    return {entry["name"] for entry in listed if entry["type"].startswith("child<")}


async def _slot_reads(backend: TrackingBackend, vm: Vm) -> str:
    nodes = await _qmp(backend, vm, "query-named-block-nodes", flat=True)
    [slot] = [node for node in nodes if node["node-name"] == "slot0"]
    return str(slot["file"])


async def _volume(backend: TrackingBackend, path: Path, size_mib: int) -> Volume:
    key = secrets.token_urlsafe(32).encode()
    await backend.create_volume(path, size_mib, key)
    return Volume(path=path, key=key, serial="hearth-workspace", size_mib=size_mib)


async def test_a_volume_of_the_slots_size_takes_it_and_another_is_hot_plugged(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, tmp_path: Path
) -> None:
    spec = VmSpec(volume_slot_mib=SLOT_MIB)
    workspace = await _volume(qemu_backend, tmp_path / "workspace.qcow2", SLOT_MIB)

    first = await qemu_backend.create(minimal_image, spec)
    assert first.boot_mode is BootMode.RESTORE
    assert "null-co" in await _slot_reads(qemu_backend, first)
    assert await qemu_backend.attach_volume(first, workspace) == SLOT_SERIAL
    assert "vol0-dev" not in await _devices(qemu_backend, first), "the volume was hot-plugged"
    assert str(workspace.path) in await _slot_reads(qemu_backend, first)
    mounted = await AgentClient(str(first.agent_url), first.token).mount_workspace(SLOT_SERIAL)
    assert (mounted["device"], mounted["formatted"]) == ("/dev/vdb", True)
    assert set(mounted["ms"]) == {"find", "format", "mount"}
    await AgentClient(str(first.agent_url), first.token).unmount_workspace()
    await qemu_backend.destroy(first)

    # The next clone read the same empty disk into its cache when its template booted.
    second = await qemu_backend.create(minimal_image, spec)
    assert await qemu_backend.attach_volume(second, workspace) == SLOT_SERIAL
    again = await AgentClient(str(second.agent_url), second.token).mount_workspace(SLOT_SERIAL)
    assert (again["device"], again["formatted"]) == ("/dev/vdb", False)

    # A volume of another size leaves the slot empty and is hot-plugged beside it.
    other = await _volume(qemu_backend, tmp_path / "other.qcow2", SLOT_MIB // 2)
    third = await qemu_backend.create(minimal_image, spec)
    assert await qemu_backend.attach_volume(third, other) == "hearth-workspace"
    assert {"slot0-dev", "vol0-dev"} <= await _devices(qemu_backend, third)
    assert "null-co" in await _slot_reads(qemu_backend, third)
    plugged = await AgentClient(str(third.agent_url), third.token).mount_workspace(
        "hearth-workspace"
    )
    assert plugged["formatted"] is True
    assert plugged["device"] != "/dev/vdb", "the empty slot was mounted"
