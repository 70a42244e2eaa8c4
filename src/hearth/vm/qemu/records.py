"""A VM's record in its work directory: what finds it again after a controller restart."""

from __future__ import annotations

import json
from pathlib import Path

from hearth.errors import HearthError, SavedStateCorrupt
from hearth.images.manifest import ImageDir
from hearth.network.namespace import NetworkSlot
from hearth.vm.host import bytes_on_disk, read_legacy_token
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.hibernation import DiskLayer
from hearth.vm.types import BootMode, NetworkMode, Vm, VmSpec, VmState, VmType


def write_record(
    vm: Vm,
    paths: VmPaths,
    port: int | None,
    network: NetworkSlot | None,
    *,
    image: ImageDir,
    layers: tuple[DiskLayer, ...],
) -> None:
    """Write ``vm.json``: process, addresses and size of a VM just started, and the image and
    disk layers under its own (what a hibernation pins)."""
    record = {
        "id": vm.id,
        "pid": vm.pid,
        "host_port": port,
        "network": vm.spec.network.value,
        "slot": network.slot.index if network else None,
        "agent_url": vm.agent_url,
        "ports": {str(k): v for k, v in vm.ports.items()},
        "vm_type": vm.spec.vm_type.value,
        "vcpus": vm.spec.vcpus,
        "mem_mib": vm.spec.mem_mib,
        "volume_slot_mib": vm.spec.volume_slot_mib,
        "boot_mode": vm.boot_mode.value,
        "created_at": vm.created_at,
        "image": str(image.path),
        "layers": [[str(layer.path), layer.fmt] for layer in layers],
    }
    paths.record.write_text(json.dumps(record))


def read_record(workdir: Path) -> dict[str, object] | None:
    """The raw record of the VM in ``workdir``, if readable."""
    try:
        data = json.loads((workdir / "vm.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def vm_from_record(workdir: Path, *, backend: str) -> Vm | None:
    """Rebuild a Vm from its work directory's record, if readable (with the token an older
    controller kept there in clear, if any)."""
    try:
        record = json.loads((workdir / "vm.json").read_text())
        spec = VmSpec(
            vm_type=VmType(record.get("vm_type", "cli")),
            vcpus=int(record["vcpus"]),
            mem_mib=int(record["mem_mib"]),
            network=NetworkMode(record.get("network", "user")),
            volume_slot_mib=recorded_slot_mib(record),
        )
    except (OSError, ValueError, KeyError, HearthError):
        return None
    return Vm(
        id=str(record["id"]),
        spec=spec,
        backend=backend,
        state=VmState.READY,
        agent_url=record.get("agent_url"),
        token=read_legacy_token(workdir),
        pid=int(record.get("pid") or 0) or None,
        workdir=workdir,
        boot_mode=BootMode(record.get("boot_mode", "cold")),
        created_at=float(record.get("created_at", 0.0)),
        disk_bytes=bytes_on_disk(workdir / "disk.qcow2"),
        ports={int(k): int(v) for k, v in (record.get("ports") or {}).items()},
    )


def saved_disks(workdir: Path, vm_id: str) -> tuple[ImageDir, tuple[DiskLayer, ...], int]:
    """What a hibernated VM wakes on: the image and layers its record pinned, and the size of
    the volume slot it started with; SavedStateCorrupt when the record names no layers."""
    record = read_record(workdir) or {}
    saved = recorded_layers(record)
    if saved is None:
        raise SavedStateCorrupt(f"VM {vm_id}: its record names no pinned disk layers")
    return (*saved, recorded_slot_mib(record))


def recorded_slot_mib(record: dict[str, object]) -> int:
    """The size of the volume slot a record's VM started with (0: none, or an older record)."""
    size = record.get("volume_slot_mib", 0)
    return size if isinstance(size, int) else 0


def recorded_layers(record: dict[str, object]) -> tuple[ImageDir, tuple[DiskLayer, ...]] | None:
    """The image and disk layers a record names (None: written by an older controller)."""
    image, layers = record.get("image"), record.get("layers")
    if not isinstance(image, str) or not isinstance(layers, list):
        return None
    return ImageDir(Path(image)), tuple(DiskLayer(Path(path), fmt) for path, fmt in layers)
