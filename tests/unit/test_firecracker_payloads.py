"""Firecracker request bodies: bounds, drive modes, boot arguments, secrets kept out of sight."""

from __future__ import annotations

import json

import pytest

from hearth.errors import InvalidInput
from hearth.vm.firecracker import payloads
from hearth.vm.firecracker.payloads import SecretBody, VmRunState

TOKEN = "tok_" + "Q" * 40


def test_machine_config_turns_smt_off_and_keeps_the_size() -> None:
    assert payloads.machine_config(vcpus=2, mem_mib=512) == {
        "vcpu_count": 2,
        "mem_size_mib": 512,
        "smt": False,
        "track_dirty_pages": False,
    }


@pytest.mark.parametrize(("vcpus", "mem_mib"), [(0, 512), (33, 512), (1, 127), (1, 64 * 1024 + 1)])
def test_machine_config_rejects_sizes_out_of_bounds(vcpus: int, mem_mib: int) -> None:
    with pytest.raises(InvalidInput):
        payloads.machine_config(vcpus=vcpus, mem_mib=mem_mib)


def test_machine_config_accepts_the_bounds() -> None:
    payloads.machine_config(vcpus=1, mem_mib=128)
    payloads.machine_config(vcpus=32, mem_mib=64 * 1024)


def test_root_drive_is_writable_by_default_and_read_only_on_request() -> None:
    writable = payloads.root_drive("rootfs")
    assert writable == {
        "drive_id": "rootfs",
        "path_on_host": "rootfs",
        "is_root_device": True,
        "is_read_only": False,
    }
    assert payloads.root_drive("golden.ext4", read_only=True)["is_read_only"] is True


def test_boot_args_boot_hearth_init_without_an_initramfs() -> None:
    args = payloads.boot_args(guest_cidr="10.0.2.15/24", gateway="10.0.2.2").split()
    assert args[:4] == ["console=ttyS0", "reboot=k", "panic=1", "pci=off"]
    assert "root=/dev/vda" in args
    assert "rw" in args
    assert "init=/usr/sbin/hearth-init" in args
    assert "hearth.ip=10.0.2.15/24" in args
    assert "hearth.gw=10.0.2.2" in args


def test_boot_args_with_an_initramfs_tell_it_where_the_real_init_is() -> None:
    args = payloads.boot_args(guest_cidr="10.0.2.15/24", gateway="10.0.2.2", with_initrd=True)
    assert "hearth.init=/usr/sbin/hearth-init" in args.split()
    assert "init=/usr/sbin/hearth-init" not in args.split()


@pytest.mark.parametrize("bad", ["1.2.3.4/30 init=/bin/sh", "a;b", ""])
def test_boot_args_refuse_values_that_would_inject_arguments(bad: str) -> None:
    with pytest.raises(InvalidInput):
        payloads.boot_args(guest_cidr=bad, gateway="10.0.2.2")


def test_boot_source_carries_the_initrd_only_when_given() -> None:
    assert "initrd_path" not in payloads.boot_source(kernel_image_path="vmlinux", boot_args="x")
    with_initrd = payloads.boot_source(kernel_image_path="vmlinux", boot_args="x", initrd_path="i")
    assert with_initrd["initrd_path"] == "i"


def test_network_interface_needs_a_lower_case_mac() -> None:
    body = payloads.network_interface(host_dev_name="tap0", guest_mac="06:00:ac:10:00:02")
    assert body == {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}
    with pytest.raises(InvalidInput):
        payloads.network_interface(host_dev_name="tap0", guest_mac="06:00:AC:10:00:02")


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "x" * 65, "drive 1"])
def test_resource_ids_that_would_change_the_path_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        payloads.drive(drive_id=bad, path_on_host="p", is_root_device=False, is_read_only=True)


def test_mmds_uses_version_2_on_the_guest_interface() -> None:
    assert payloads.mmds_config() == {"version": "V2", "network_interfaces": ["eth0"]}


def test_mmds_document_carries_the_vm_identity_and_token_but_never_shows_them() -> None:
    document = payloads.mmds_document(vm_id="vm-1", agent_port=8080, token=TOKEN)
    assert json.loads(json.dumps(document)) == {
        "hearth": {"vm_id": "vm-1", "agent_port": 8080, "token": TOKEN}
    }
    assert isinstance(document, SecretBody)
    assert TOKEN not in repr(document)
    assert TOKEN not in str(document)
    assert TOKEN not in f"{document}"


def test_a_templates_mmds_document_has_no_token() -> None:
    document = payloads.mmds_document(vm_id="tpl-1", agent_port=8080)
    assert "token" not in document["hearth"]


def test_vm_state_bodies() -> None:
    assert payloads.vm_state(VmRunState.PAUSED) == {"state": "Paused"}
    assert payloads.vm_state(VmRunState.RESUMED) == {"state": "Resumed"}


def test_snapshot_create_is_always_full() -> None:
    assert payloads.snapshot_create(snapshot_path="s", mem_file_path="m")["snapshot_type"] == "Full"


def test_snapshot_load_maps_memory_from_a_file_and_stays_paused() -> None:
    body = payloads.snapshot_load(
        snapshot_path="s",
        mem_file_path="m",
        network_overrides=[payloads.network_override(host_dev_name="tap9")],
    )
    assert body == {
        "snapshot_path": "s",
        "mem_backend": {"backend_type": "File", "backend_path": "m"},
        "resume_vm": False,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
    }
    assert "mem_file_path" not in body  # deprecated in the spec; mem_backend replaces it


def test_logger_writes_warnings_with_their_level() -> None:
    assert payloads.logger(log_path="firecracker.log") == {
        "log_path": "firecracker.log",
        "level": "Warning",
        "show_level": True,
        "show_log_origin": False,
    }
