"""Persistent volumes of a QEMU VM (a user's workspace): hot-plugged after start, on the command
line when a hibernated VM wakes.

A VM restored from a template must start with exactly the devices the template was saved with,
so a volume is never on a clone's command line: it is hot-plugged once the VM runs (QMP
``object-add`` of its key, ``blockdev-add``, ``device_add`` at a fixed PCI slot). A hibernated
VM's saved state holds that device, so its wake puts the same objects on the command line, with
the same ids, at the same slot. The key reaches QEMU over QMP (a unix socket only the controller
opens) or, at a wake, through an inherited pipe: never on a command line or on the disk.
"""

from __future__ import annotations

from typing import Any

from hearth.vm.qemu.monitor import Monitor
from hearth.vm.types import Volume

_FIRST_SLOT = 0x10  # PCI slots below are the VM's own devices


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


async def hotplug(monitor: Monitor, index: int, volume: Volume) -> None:
    """Attach ``volume`` as the VM's ``index``-th volume."""
    secret = _ids(index)[0]
    await monitor.execute(
        "object-add", {"qom-type": "secret", "id": secret, "data": volume.key.decode()}
    )
    await monitor.execute("blockdev-add", _blockdev(index, volume))
    await monitor.execute("device_add", _device(index, volume))


def wake_argv(index: int, volume: Volume, key_fd: int) -> list[str]:
    """The command-line arguments that recreate the ``index``-th volume as it was hot-plugged,
    its key read from inherited ``key_fd``."""
    secret, node, _dev, _addr = _ids(index)
    blockdev = ",".join(
        [
            "driver=qcow2",
            f"node-name={node}",
            "file.driver=file",
            f"file.filename={volume.path}",
            "encrypt.format=luks",
            f"encrypt.key-secret={secret}",
        ]
    )
    device = ",".join(f"{k}={v}" for k, v in _device(index, volume).items())
    device = device.replace("driver=virtio-blk-pci,", "virtio-blk-pci,", 1)
    return [
        "-object",
        f"secret,id={secret},format=raw,file=/dev/fd/{key_fd}",
        "-blockdev",
        blockdev,
        "-device",
        device,
    ]
