"""``HEARTH_VMM``: which VMM runs, and the exact reasons one cannot run on this host."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.vm.backend import VmBackend
from hearth.vm.readiness import COLD_BOOT_DEADLINE_S
from hearth.vm.select import Vmm, check_vmm, open_backend
from tests.conftest import require_tools


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state"), **env})


def test_qemu_is_the_default() -> None:
    assert Settings.from_env({}).vmm == "qemu"


def test_an_unknown_vmm_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="HEARTH_VMM must be one of qemu, firecracker"):
        Settings.from_env({"HEARTH_VMM": "xen"})


def test_firecracker_without_its_binary_names_the_missing_binary(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        HEARTH_VMM="firecracker",
        HEARTH_NETWORK_MODE="netns",
        HEARTH_FIRECRACKER_BIN=str(tmp_path / "no-such-firecracker"),
    )
    check = check_vmm(settings)
    assert check.vmm is Vmm.FIRECRACKER
    assert not check.ok
    assert "no-such-firecracker is not installed" in check.reason
    with pytest.raises(ConfigError, match="HEARTH_VMM=firecracker cannot run on this host"):
        open_backend(settings)


def test_firecracker_names_every_problem_at_once(tmp_path: Path) -> None:
    binary = tmp_path / "firecracker"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    settings = settings_for(tmp_path, HEARTH_VMM="firecracker", HEARTH_FIRECRACKER_BIN=str(binary))
    check = check_vmm(settings)
    assert not check.ok
    assert "HEARTH_NETWORK_MODE=netns" in check.reason
    assert "is not installed" not in check.reason  # the binary was found
    if check.accel.name != "kvm":
        assert f"firecracker needs a usable /dev/kvm, and here {check.accel.reason}" in check.reason


@pytest.mark.parametrize("name", ["HEARTH_VM_TIMEOUT_ACTION", "HEARTH_VM_IDLE_ACTION"])
def test_a_default_hibernate_action_is_refused_where_the_vmm_cannot_hibernate(
    tmp_path: Path, name: str
) -> None:
    settings = settings_for(
        tmp_path, HEARTH_VMM="firecracker", HEARTH_NETWORK_MODE="netns", **{name: "hibernate"}
    )
    check = check_vmm(settings)
    assert not check.ok
    assert f"{name}=hibernate, but firecracker cannot hibernate VMs" in check.reason
    with pytest.raises(ConfigError, match=f"{name}=hibernate"):
        open_backend(settings)
    assert "hibernate" not in check_vmm(settings, Vmm.QEMU).reason  # QEMU can


def test_qemu_opens_as_a_vm_backend_when_its_tools_exist(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64", "qemu-img")
    settings = settings_for(tmp_path)
    check = check_vmm(settings)
    assert check.ok, check.reason
    assert check.reason.startswith(f"runs with {check.accel.name}")
    backend = open_backend(settings)
    assert isinstance(backend, VmBackend)
    assert backend.name == "qemu"


def test_the_cold_boot_deadline_is_the_vmms_own_unless_set(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64", "qemu-img")
    assert open_backend(settings_for(tmp_path)).cold_deadline_s == COLD_BOOT_DEADLINE_S
    slow_host = settings_for(tmp_path, HEARTH_COLD_BOOT_DEADLINE_S="300")
    assert open_backend(slow_host).cold_deadline_s == 300.0


def test_a_cold_boot_deadline_out_of_bounds_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="HEARTH_COLD_BOOT_DEADLINE_S"):
        Settings.from_env({"HEARTH_COLD_BOOT_DEADLINE_S": "-1"})
