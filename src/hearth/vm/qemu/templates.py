"""QEMU snapshot templates: one saved, healthy VM per (image, VM size) that clones restore.

A template directory holds the template's frozen qcow2 layer (on the golden image), the saved
machine state, and ``template.json``. Clones put their own overlay on the frozen layer, so the
layer the saved state refers to never changes. The key includes the image file's identity, so an
image replaced by ``install-agent`` or a rebuild gets a new template automatically. Building,
locking and pruning are the shared ``hearth.vm.templates`` store's.
"""

from __future__ import annotations

from pathlib import Path

from hearth.images.manifest import ImageDir
from hearth.vm.accel import Accel
from hearth.vm.templates import (
    SnapshotTemplate,
    SnapshotTemplateStore,
    TemplateFile,
    file_identity,
    template_key_of,
)
from hearth.vm.types import VmSpec


class Template(SnapshotTemplate):
    """A saved QEMU template ready to be restored (a frozen dataclass, like its base)."""

    # The frozen disk layer clones are stacked on.
    overlay = TemplateFile("disk.qcow2")
    # The saved machine state (``migrate`` to file); restores only stream it in with ``cat``.
    state = TemplateFile("state.bin", frozen=False)


# Bump when the key material changes shape, so no old template is mistaken for a new one.
TEMPLATE_FORMAT = 1


def template_key(image: ImageDir, spec: VmSpec, accel: Accel) -> str:
    """Identifies a template: image content and file identity, VM size, accelerator."""
    manifest = image.manifest
    material = {
        "format": TEMPLATE_FORMAT,
        "content_hash": manifest.content_hash if manifest else None,
        "files": [file_identity(p) for p in (image.rootfs, image.kernel, image.initramfs)],
        "size": spec.size_key,
        "network": spec.network.value,
        "accel": accel.name,
    }
    return template_key_of(material)


class TemplateStore(SnapshotTemplateStore[Template]):
    """QEMU templates under one root, built at most once per key (across processes too)."""

    template_class = Template


def build_vm_id(staging: Path) -> str:
    """The id of the VM a template build boots in ``staging`` (its QMP socket's and network
    slot's name)."""
    return f"template-{staging.name.lstrip('.')}"
