"""Firecracker snapshot templates: one booted, healthy, paused VM per (image, size), saved once.

A template directory holds ``disk.ext4`` (the template VM's root disk, frozen read-only; clones
layer their own copy-on-write disk on it), ``vmstate`` and ``memory`` (the full snapshot;
clones map the memory file MAP_PRIVATE, so it must never change), and ``template.json`` (what
produced it: Firecracker version and the VM config it reported, from the build's metadata). The
key covers everything a clone must share with its template: image files, VM size, kernel
command line, guest network identity and the Firecracker binary (snapshots are tied to its
version). Building, locking and pruning are the shared ``hearth.vm.templates`` store's.
"""

from __future__ import annotations

from pathlib import Path

from hearth.images.manifest import ImageDir
from hearth.vm.templates import (
    SnapshotTemplate,
    SnapshotTemplateStore,
    TemplateFile,
    file_identity,
    template_key_of,
)
from hearth.vm.types import VmSpec


class FcTemplate(SnapshotTemplate):
    """A saved Firecracker template ready to be restored (a frozen dataclass, like its base)."""

    disk = TemplateFile("disk.ext4")  # the root disk clones are layered on
    vmstate = TemplateFile("vmstate")  # the microVM state file
    memory = TemplateFile("memory")  # the guest memory file


# Bump when the key material changes shape, so no old template is mistaken for a new one.
TEMPLATE_FORMAT = 1


def template_key(
    image: ImageDir,
    spec: VmSpec,
    *,
    firecracker: str,
    boot_args: str,
    guest_identity: tuple[str, str, str, int],
    use_initrd: bool,
) -> str:
    """Identifies a template; any change a clone could notice gives a new key."""
    manifest = image.manifest
    files = [image.rootfs, image.vmlinux, *([image.initramfs] if use_initrd else [])]
    material = {
        "format": TEMPLATE_FORMAT,
        "content_hash": manifest.content_hash if manifest else None,
        "files": [file_identity(p) for p in files],
        "firecracker": file_identity(Path(firecracker)),
        "size": spec.size_key,
        "boot_args": boot_args,
        "guest": list(guest_identity),
    }
    return template_key_of(material)


class FcTemplateStore(SnapshotTemplateStore[FcTemplate]):
    """Firecracker templates under one root, built at most once per key (across processes too)."""

    template_class = FcTemplate
