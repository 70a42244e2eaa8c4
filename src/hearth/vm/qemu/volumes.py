"""Persistent volumes of a QEMU VM (a user's workspace): put in the VM's volume slot or
hot-plugged after start, on the command line when a hibernated VM wakes.

A VM restored from a template must start with exactly the devices the template was saved with, so a
volume is never on a clone's command line. A VM whose spec has a volume slot starts with a virtio
disk of that size (serial ``SLOT_SERIAL``) on an empty, zero-reading node: a volume of that size
takes the slot by a swap of that node's file (QMP ``object-add`` of its key, ``blockdev-add``,
``blockdev-reopen``), which the guest does not have to discover; any other volume is hot-plugged
(``device_add`` at a fixed PCI slot, with the volume's own serial), which under TCG takes the guest
about half a second to see. A hibernated VM's saved state holds those devices, so its wake puts the
same objects on the command line, with the same ids, at the same slots. The key reaches QEMU over
QMP (a unix socket only the controller opens) or, at a wake, through an inherited pipe: never on a
command line or on the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.options import option_value
from hearth.vm.types import SLOT_SERIAL, VmSpec, Volume

_FIRST_SLOT = 0x10  # PCI slots below are the VM's own devices
# The volume slot's disk: its PCI slot, its device, the node it reads through, and the empty
# node that node reads until a volume takes the slot.
_SLOT_ADDR = hex(0x0F)
_SLOT_DEVICE = "slot0-dev"
_SLOT_NODE = "slot0"
_SLOT_EMPTY = "slot0-empty"
_MIB = 1024 * 1024


def fits_slot(spec: VmSpec, volume: Volume) -> bool:
    """Whether ``volume`` can take the volume slot of a VM of ``spec`` (the slot being free)."""
    return spec.volume_slot_mib > 0 and volume.size_mib == spec.volume_slot_mib


def in_slot(spec: VmSpec, volumes: Sequence[Volume]) -> int | None:
    """The index of the volume in the slot among a VM's ``volumes`` (in attach order): the
    first that fits it; None when the slot is empty."""
    return next((i for i, volume in enumerate(volumes) if fits_slot(spec, volume)), None)


def slot_argv(spec: VmSpec, index: int | None) -> list[str]:
    """The volume slot's disk, reading the ``index``-th volume's node (defined before these
    arguments) or, with None, an empty node; nothing when ``spec`` has no slot."""
    if not spec.volume_slot_mib:
        return []
    if index is None:
        size = spec.volume_slot_mib * _MIB
        empty = f"driver=null-co,node-name={_SLOT_EMPTY},size={size},read-zeroes=on"
        source = ["-blockdev", empty]
        child = _SLOT_EMPTY
    else:
        source = []
        child = _ids(index)[1]
    device = f"virtio-blk-pci,drive={_SLOT_NODE},id={_SLOT_DEVICE},serial={SLOT_SERIAL}"
    return [
        *source,
        "-blockdev",
        f"driver=raw,node-name={_SLOT_NODE},file={child}",
        "-device",
        f"{device},addr={_SLOT_ADDR}",
    ]


def _ids(index: int) -> tuple[str, str, str, str]:
    """The key secret, block node, device ids and PCI address of the ``index``-th volume."""
    return f"vol{index}-key", f"vol{index}", f"vol{index}-dev", hex(_FIRST_SLOT + index)


def _blockdev(index: int, volume: Volume) -> dict[str, Any]:
    secret, node, _device, _addr = _ids(index)
    return {
        "driver": "qcow2",
        "node-name": node,
        "file": {"driver": "file", "filename": str(volume.path)},
        "encrypt": {"format": "luks", "key-secret": secret},
    }


def _device(index: int, volume: Volume) -> dict[str, Any]:
    _secret, node, device, addr = _ids(index)
    return {
        "driver": "virtio-blk-pci",
        "drive": node,
        "id": device,
        "serial": volume.serial,
        "addr": addr,
    }


async def attach(monitor: Monitor, spec: VmSpec, attached: Sequence[Volume], volume: Volume) -> str:
    """Attach ``volume`` as the next of a VM's ``attached`` volumes: into the volume slot of
    ``spec`` if it fits a free one, else hot-plugged; the serial the guest finds it by."""
    index = len(attached)
    slot = in_slot(spec, [*attached, volume]) == index
    secret, node, _dev, _addr = _ids(index)
    await monitor.execute(
        "object-add", {"qom-type": "secret", "id": secret, "data": volume.key.decode()}
    )
    await monitor.execute("blockdev-add", _blockdev(index, volume))
    if not slot:
        await monitor.execute("device_add", _device(index, volume))
        return volume.serial
    # The slot's disk now reads the volume; the guest's device stays as it was.
    await monitor.execute(
        "blockdev-reopen", {"options": [{"driver": "raw", "node-name": _SLOT_NODE, "file": node}]}
    )
    await monitor.execute("blockdev-del", {"node-name": _SLOT_EMPTY})
    return SLOT_SERIAL


def wake_argv(index: int, volume: Volume, key_fd: int, *, slot: bool) -> list[str]:
    """The command-line arguments that recreate the ``index``-th volume as it was attached, its
    key read from inherited ``key_fd`` (in the slot: its node alone; ``slot_argv`` then makes
    the slot's disk read it)."""
    secret, node, _dev, _addr = _ids(index)
    blockdev = ",".join(
        [
            "driver=qcow2",
            f"node-name={node}",
            "file.driver=file",
            f"file.filename={option_value(volume.path)}",
            "encrypt.format=luks",
            f"encrypt.key-secret={secret}",
        ]
    )
    argv = [
        "-object",
        f"secret,id={secret},format=raw,file=/dev/fd/{key_fd}",
        "-blockdev",
        blockdev,
    ]
    if slot:
        return argv
    device = ",".join(f"{k}={v}" for k, v in _device(index, volume).items())
    return [*argv, "-device", device.replace("driver=virtio-blk-pci,", "virtio-blk-pci,", 1)]
