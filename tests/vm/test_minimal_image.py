"""The golden image end to end: built by the CLI, verified, booted under QEMU to /health 200."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from hearth.images.manifest import ImageDir
from hearth.vm.types import BootMode, VmSpec, VmState
from tests.conftest import hearth_cli
from tests.vm.conftest import TrackingBackend

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def test_build_writes_manifest_with_recipe_agent_version_hash_and_sizes(
    minimal_image: ImageDir,
) -> None:
    manifest = json.loads((minimal_image.path / "manifest.json").read_text())
    assert manifest["recipe"] == "minimal"
    assert manifest["agent_version"] == __import__("hearth_agent").__version__
    assert len(manifest["content_hash"]) == 20
    assert "python3" in manifest["packages"]
    for name in ("rootfs.ext4", "vmlinuz", "vmlinux", "initramfs.img"):
        assert manifest["sizes"][name] == (minimal_image.path / name).stat().st_size > 0


def test_build_ships_an_uncompressed_elf_vmlinux_for_firecracker(minimal_image: ImageDir) -> None:
    with minimal_image.vmlinux.open("rb") as fh:
        assert fh.read(4) == b"\x7fELF"


def test_second_build_with_nothing_changed_reuses_the_cache(
    minimal_image_build: tuple[ImageDir, subprocess.CompletedProcess[str]],
) -> None:
    image, _ = minimal_image_build
    again = hearth_cli("image", "build", "--recipe", "minimal", "--out", str(image.path))
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr + again.stdout
    assert "phase_started" in again.stderr
    assert '"phase": "rootfs"' not in again.stderr
    assert '"phase": "ext4"' not in again.stderr


def test_built_image_passes_verify(minimal_image: ImageDir) -> None:
    result = hearth_cli("image", "verify", str(minimal_image.rootfs))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


async def test_cold_boot_answers_health_200_on_a_forwarded_loopback_port(
    minimal_image: ImageDir, qemu_backend: TrackingBackend
) -> None:
    vm = await qemu_backend.create(minimal_image, VmSpec(), boot_mode=BootMode.COLD)
    print(f"cold boot to healthy: {vm.time_to_healthy_s:.2f} s")
    assert vm.state is VmState.READY
    assert vm.boot_mode is BootMode.COLD
    assert vm.agent_url is not None
    assert vm.agent_url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{vm.agent_url}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["claimed"] is True
        anonymous = await client.get(f"{vm.agent_url}/version")
        assert anonymous.status_code == 401
        version = await client.get(
            f"{vm.agent_url}/version", headers={"Authorization": f"Bearer {vm.token}"}
        )
        assert version.status_code == 200
        assert version.json()["python"].startswith("3.11")
    assert "hearth-init: starting agent" in qemu_backend.console_tail(vm, 400)
