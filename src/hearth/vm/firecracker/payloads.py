"""Request bodies for the Firecracker API (v1.16.1), built by pure functions from typed arguments.

Each builder returns exactly the fields the spec's definitions name (the contract tests validate
them with ``additionalProperties: false``), and validates what Firecracker would otherwise reject
later with a less helpful message.

Guest kernel limitation: Firecracker boots an uncompressed ``vmlinux`` and exposes its block and
network devices over virtio-mmio, announced on the kernel command line
(``virtio_mmio.device=...``, appended by Firecracker). Debian's cloud kernel builds virtio (and
virtio_mmio) as modules: module parameters on the command line are applied only when the module
is loaded by ``modprobe`` (which reads ``/proc/cmdline``), not by busybox ``insmod`` as our
initramfs does. The dependable setup is a kernel with ``CONFIG_VIRTIO_MMIO=y``,
``CONFIG_VIRTIO_BLK=y`` and ``CONFIG_VIRTIO_NET=y`` built in (Firecracker's guest configs) booted
without an initramfs (``init=/usr/sbin/hearth-init``); passing ``initrd_path`` (the image's
``initramfs.img``) is supported for kernels that need it, and then the initramfs is told where
the real init is with ``hearth.init=``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from hearth.errors import InvalidInput
from hearth.vm.types import MAX_MEM_MIB

Body = dict[str, Any]

ROOT_DRIVE_ID = "rootfs"
IFACE_ID = "eth0"
GUEST_INIT = "/usr/sbin/hearth-init"
FC_MAX_VCPUS = 32  # MachineConfiguration.vcpu_count maximum in the spec
MIN_MEM_MIB = 128
# Firecracker's recommended arguments: serial console, reboot via keyboard controller (which makes
# Firecracker exit), no PCI probing (devices are virtio-mmio).
BASE_BOOT_ARGS = ("console=ttyS0", "reboot=k", "panic=1", "pci=off")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_CMDLINE_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/=-]+$")


class VmRunState(StrEnum):
    """The two states ``PATCH /vm`` accepts."""

    PAUSED = "Paused"  # vCPUs stopped, memory and devices kept
    RESUMED = "Resumed"  # vCPUs running again


class SecretBody(dict[str, Any]):
    """A request body holding secrets (the MMDS document): its repr and str never show contents."""

    def __repr__(self) -> str:
        return f"SecretBody(<{len(self)} keys redacted>)"

    __str__ = __repr__


def check_id(value: str, *, what: str) -> str:
    """Return ``value`` if it is a valid Firecracker resource id, else raise InvalidInput."""
    if not _ID_RE.match(value):
        raise InvalidInput(f"{what} must be 1-64 letters, digits, '_' or '-', got {value!r}")
    return value


def machine_config(*, vcpus: int, mem_mib: int, track_dirty_pages: bool = False) -> Body:
    """``PUT /machine-config``: vCPUs and memory, SMT off (clones must match the template's)."""
    if not 1 <= vcpus <= FC_MAX_VCPUS:
        raise InvalidInput(f"firecracker supports 1 to {FC_MAX_VCPUS} vCPUs, got {vcpus}")
    if not MIN_MEM_MIB <= mem_mib <= MAX_MEM_MIB:
        raise InvalidInput(
            f"mem_mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {mem_mib}"
        )
    return {
        "vcpu_count": vcpus,
        "mem_size_mib": mem_mib,
        "smt": False,
        "track_dirty_pages": track_dirty_pages,
    }


def boot_args(
    *,
    guest_cidr: str,
    gateway: str,
    with_initrd: bool = False,
    init: str = GUEST_INIT,
    extra: Sequence[str] = (),
) -> str:
    """The kernel command line: console, root disk, hearth-init, and the guest's address."""
    for value in (guest_cidr, gateway, init, *extra):
        if not _CMDLINE_VALUE_RE.match(value):
            raise InvalidInput(f"kernel argument {value!r} has characters the command line forbids")
    words = [*BASE_BOOT_ARGS, "root=/dev/vda", "rw"]
    # With an initramfs the kernel runs its /init, which reads hearth.init to find the real one.
    words.append(f"hearth.init={init}" if with_initrd else f"init={init}")
    words += [f"hearth.ip={guest_cidr}", f"hearth.gw={gateway}", *extra]
    return " ".join(words)


def boot_source(*, kernel_image_path: str, boot_args: str, initrd_path: str | None = None) -> Body:
    """``PUT /boot-source``: the uncompressed kernel, its command line and optional initrd."""
    body: Body = {"kernel_image_path": kernel_image_path, "boot_args": boot_args}
    if initrd_path is not None:
        body["initrd_path"] = initrd_path
    return body


def drive(*, drive_id: str, path_on_host: str, is_root_device: bool, is_read_only: bool) -> Body:
    """``PUT /drives/{drive_id}``: a virtio-block device backed by a host file or block device."""
    return {
        "drive_id": check_id(drive_id, what="drive_id"),
        "path_on_host": path_on_host,
        "is_root_device": is_root_device,
        "is_read_only": is_read_only,
    }


def root_drive(path_on_host: str, *, read_only: bool = False) -> Body:
    """The root drive: the VM's own copy-on-write disk, writable unless ``read_only``."""
    return drive(
        drive_id=ROOT_DRIVE_ID,
        path_on_host=path_on_host,
        is_root_device=True,
        is_read_only=read_only,
    )


def network_interface(*, host_dev_name: str, guest_mac: str, iface_id: str = IFACE_ID) -> Body:
    """``PUT /network-interfaces/{iface_id}``: the guest NIC backed by a tap in the VM's netns."""
    if not _MAC_RE.match(guest_mac):
        raise InvalidInput(f"guest_mac must be a lower-case MAC address, got {guest_mac!r}")
    return {
        "iface_id": check_id(iface_id, what="iface_id"),
        "host_dev_name": host_dev_name,
        "guest_mac": guest_mac,
    }


def mmds_config(*, iface_ids: Sequence[str] = (IFACE_ID,)) -> Body:
    """``PUT /mmds/config``: MMDS version 2 (session tokens) answering on the given interfaces."""
    return {
        "version": "V2",
        "network_interfaces": [check_id(i, what="iface_id") for i in iface_ids],
    }


def mmds_document(*, vm_id: str, agent_port: int, token: str | None = None) -> SecretBody:
    """``PUT /mmds``: ``{"hearth": {vm_id, token, agent_port}}``; templates get no token."""
    hearth: Body = {"vm_id": vm_id, "agent_port": agent_port}
    if token is not None:
        hearth["token"] = token
    return SecretBody(hearth=hearth)


def entropy() -> Body:
    """``PUT /entropy``: a virtio-rng device, so the guest never starves for randomness."""
    return {}


def instance_start() -> Body:
    """``PUT /actions``: boot the configured microVM."""
    return {"action_type": "InstanceStart"}


def flush_metrics() -> Body:
    """``PUT /actions``: write the metrics now (before the process is stopped)."""
    return {"action_type": "FlushMetrics"}


def vm_state(state: VmRunState) -> Body:
    """``PATCH /vm``: pause or resume the vCPUs."""
    return {"state": VmRunState(state).value}


def snapshot_create(*, snapshot_path: str, mem_file_path: str) -> Body:
    """``PUT /snapshot/create``: a full snapshot (device state + all guest memory)."""
    return {"snapshot_type": "Full", "snapshot_path": snapshot_path, "mem_file_path": mem_file_path}


def network_override(*, host_dev_name: str, iface_id: str = IFACE_ID) -> Body:
    """One ``NetworkOverride``: restore ``iface_id`` onto another tap."""
    return {"iface_id": check_id(iface_id, what="iface_id"), "host_dev_name": host_dev_name}


def snapshot_load(
    *,
    snapshot_path: str,
    mem_file_path: str,
    network_overrides: Sequence[Mapping[str, Any]] = (),
    resume_vm: bool = False,
    clock_realtime: bool = False,
) -> Body:
    """``PUT /snapshot/load``: memory mapped from a file, taps overridden, left paused by default.

    ``clock_realtime`` (x86_64) advances kvmclock by the wall time since the snapshot was taken,
    so a clone of an old template does not wake in the past; the agent's ``/init`` still sets
    the wall clock.
    """
    body: Body = {
        "snapshot_path": snapshot_path,
        "mem_backend": {"backend_type": "File", "backend_path": mem_file_path},
        "resume_vm": resume_vm,
    }
    if network_overrides:
        body["network_overrides"] = [dict(o) for o in network_overrides]
    if clock_realtime:
        body["clock_realtime"] = True
    return body


def logger(*, log_path: str, level: str = "Warning") -> Body:
    """``PUT /logger``: Firecracker's own log to a file (not mixed into the serial console)."""
    return {"log_path": log_path, "level": level, "show_level": True, "show_log_origin": False}


def metrics(*, metrics_path: str) -> Body:
    """``PUT /metrics``: JSON metrics flushed to a file every minute and on FlushMetrics."""
    return {"metrics_path": metrics_path}
