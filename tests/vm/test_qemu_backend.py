"""The QEMU backend for real: restore starts, concurrency, pause/resume, death, teardown."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from hearth.images.agent_install import install_agent
from hearth.images.layout import AGENT_PACKAGE_DIR, build_payload
from hearth.images.manifest import ImageDir
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.qemu.templates import template_key
from hearth.vm.types import BootMode, VmSpec, VmState
from tests.vm.conftest import TrackingBackend, qemu_pids_under

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_restore_from_template_is_healthy_and_claimed(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec())
    print(f"restore to healthy: {vm.time_to_healthy_s:.2f} s")
    assert vm.boot_mode is BootMode.RESTORE
    assert vm.state is VmState.READY
    async with httpx.AsyncClient() as client:
        version = await client.get(f"{vm.agent_url}/version", headers=auth(vm.token))
        assert version.status_code == 200
        again = await client.post(f"{vm.agent_url}/init", json={"token": "x" * 40})
        assert again.status_code == 409


async def test_three_vms_at_once_are_healthy_with_distinct_tokens(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vms = await asyncio.gather(*(qemu_backend.create(minimal_image, VmSpec()) for _ in range(3)))
    assert len({vm.token for vm in vms}) == 3
    assert len({vm.agent_url for vm in vms}) == 3
    async with httpx.AsyncClient() as client:
        for vm in vms:
            ok = await client.get(f"{vm.agent_url}/version", headers=auth(vm.token))
            assert ok.status_code == 200
        first, second = vms[0], vms[1]
        foreign = await client.get(f"{first.agent_url}/version", headers=auth(second.token))
        assert foreign.status_code == 401


async def test_each_vm_gets_its_own_overlay_and_never_copies_the_golden_image(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec())
    assert vm.workdir is not None
    overlay = vm.workdir / "disk.qcow2"
    golden = minimal_image.rootfs.stat().st_blocks * 512
    assert vm.disk_bytes is not None
    assert vm.disk_bytes < golden / 100
    assert overlay.stat().st_blocks * 512 < golden / 10


async def test_pause_stops_the_agent_and_resume_brings_it_back(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec())
    await qemu_backend.pause(vm)
    assert vm.state is VmState.PAUSED
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TimeoutException):
            await client.get(f"{vm.agent_url}/health", timeout=1.0)
        await qemu_backend.resume(vm)
        assert vm.state is VmState.READY
        health = await client.get(f"{vm.agent_url}/health", timeout=10.0)
        assert health.status_code == 200


async def test_vm_killed_with_sigkill_is_marked_failed_with_console_tail(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec())
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGKILL)
    await asyncio.wait_for(qemu_backend.wait_exit(vm), timeout=10)
    assert vm.state is VmState.FAILED
    assert vm.error is not None
    assert "status -9" in vm.error
    assert "console" in vm.error
    await qemu_backend.destroy(vm)
    assert vm.state is VmState.DESTROYED


async def test_destroy_is_idempotent_and_leaves_nothing_behind(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vms = [await qemu_backend.create(minimal_image, VmSpec()) for _ in range(3)]
    workdirs = [vm.workdir for vm in vms]
    for vm in vms:
        await qemu_backend.destroy(vm)
        await qemu_backend.destroy(vm)
        assert vm.state is VmState.DESTROYED
    assert qemu_pids_under(qemu_backend.vms_dir) == []
    assert all(w is not None and not w.exists() for w in workdirs)
    assert await qemu_backend.list_running() == []


async def test_list_running_finds_live_vms_for_reconciliation(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, vm_state_dir: Path
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec())
    # A second backend object stands for a restarted controller: it finds the VM by its record.
    restarted = QemuBackend(state_dir=vm_state_dir)
    found = await restarted.list_running()
    assert [f.id for f in found] == [vm.id]
    assert found[0].pid == vm.pid
    await restarted.destroy(found[0])
    assert qemu_pids_under(qemu_backend.vms_dir) == []
    vm.move_to(VmState.STOPPING)
    await qemu_backend.destroy(vm)


async def test_failed_restore_falls_back_to_cold_boot_and_rebuilds_template(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    backend = QemuBackend(state_dir=tmp_path / "state")
    spec = VmSpec()
    first = await backend.create(minimal_image, spec)
    try:
        key = template_key(minimal_image, spec, backend.accel)
        state = backend.templates.root / key / "state.bin"
        state.write_bytes(b"this is not a migration stream")
        fallback = await backend.create(minimal_image, spec)
        try:
            assert fallback.boot_mode is BootMode.COLD
            assert fallback.state is VmState.READY
            assert backend.templates.lookup(key) is None
        finally:
            await backend.destroy(fallback)
    finally:
        await backend.destroy(first)
    assert qemu_pids_under(tmp_path) == []


def linked_image(minimal_image: ImageDir, tmp_path: Path) -> ImageDir:
    """A copy of the minimal image (hard links) that a test may roll a new agent into."""
    image_dir = tmp_path / "image"
    shutil.copytree(minimal_image.path, image_dir, copy_function=os.link)
    return ImageDir(image_dir)


def roll_out(image: ImageDir, marker: bytes) -> None:
    """Install an agent changed by ``marker`` into ``image``: a new rootfs renamed over it."""
    payload = build_payload()
    files = dict(payload.files)
    files[f"{AGENT_PACKAGE_DIR}/__init__.py"] += marker
    install_agent(image.rootfs, type(payload)(payload.version, files, payload.manifest + b" "))


async def test_template_is_rebuilt_when_the_image_changes(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    image = linked_image(minimal_image, tmp_path)
    backend = QemuBackend(state_dir=tmp_path / "state")
    spec = VmSpec()
    old_key = template_key(image, spec, backend.accel)
    vm = await backend.create(image, spec)
    await backend.destroy(vm)
    roll_out(image, b"# rebuilt\n")
    new_key = template_key(image, spec, backend.accel)
    assert new_key != old_key
    vm = await backend.create(image, spec)
    try:
        assert vm.boot_mode is BootMode.RESTORE
        assert backend.templates.lookup(new_key) is not None
        assert backend.templates.lookup(old_key) is None
    finally:
        await backend.destroy(vm)


async def test_a_vm_hibernated_after_a_rollout_saves_and_wakes_on_the_image_it_ran_on(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    # A rollout renames a new rootfs over the image's path while the VM runs. The VM's disk
    # holds changes against the rootfs it started on: that one is what it must be saved and
    # woken on, or its filesystem would be read against the wrong blocks.
    image = linked_image(minimal_image, tmp_path)
    backend = QemuBackend(state_dir=tmp_path / "state")
    vm = await backend.create(image, VmSpec())
    try:
        ran_on = image.rootfs.stat().st_ino
        roll_out(image, b"# rolled out\n")
        assert image.rootfs.stat().st_ino != ran_on
        key = secrets.token_bytes(32)

        await backend.hibernate(vm, key)

        assert vm.workdir is not None
        pinned = sorted((vm.workdir / "pinned").glob("layer-*.raw"))
        assert [layer.stat().st_ino for layer in pinned] == [ran_on]
        token = vm.token
        vm = await backend.wake(vm, key)
        async with httpx.AsyncClient() as client:
            version = await client.get(f"{vm.agent_url}/version", headers=auth(token))
        assert version.status_code == 200
    finally:
        await backend.destroy(vm)


async def test_agent_that_exits_inside_the_vm_is_respawned_and_stays_claimed(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec())
    async with httpx.AsyncClient() as client:
        before = (await client.get(f"{vm.agent_url}/health")).json()
        restart = await client.post(f"{vm.agent_url}/admin/restart", headers=auth(vm.token))
        assert restart.status_code == 202
        # hearth-init restarts the agent 0.5 s after it exits; poll until a new one answers.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                health = await client.get(f"{vm.agent_url}/health", timeout=2)
                if health.status_code == 200 and health.json()["uptime_s"] < before["uptime_s"]:
                    break
            except httpx.HTTPError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "agent was not respawned"
            await asyncio.sleep(0.1)
        assert health.json()["claimed"] is True
        version = await client.get(f"{vm.agent_url}/version", headers=auth(vm.token))
        assert version.status_code == 200
    assert "restarting" in qemu_backend.console_tail(vm, 200)
    # The new agent read the token from the guest's tmpfs; it never reached the VM's disk.
    assert vm.workdir is not None
    assert vm.token is not None
    assert vm.token.encode() not in (vm.workdir / "disk.qcow2").read_bytes()


async def test_clone_of_an_old_template_gets_the_current_clock_when_claimed(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    backend = QemuBackend(state_dir=tmp_path / "state")
    spec = VmSpec(mem_mib=384)
    first = await backend.create(minimal_image, spec)
    await backend.destroy(first)
    # The template was saved at least this long ago when the clone wakes up.
    await asyncio.sleep(6)
    clone = await backend.create(minimal_image, spec, claim=False)
    try:
        async with httpx.AsyncClient() as client:
            stale = (await client.get(f"{clone.agent_url}/health")).json()
            assert time.time() - stale["time"] > 5, "an unclaimed clone should lag behind"
            await backend.claim(clone)
            fresh = (await client.get(f"{clone.agent_url}/health")).json()
            assert abs(time.time() - fresh["time"]) < 2
            assert fresh["claimed"] is True
    finally:
        await backend.destroy(clone)
