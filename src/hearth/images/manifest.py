"""The manifest written next to every built image: what it is and what went into it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
ROOTFS_NAME = "rootfs.ext4"
KERNEL_NAME = "vmlinuz"
VMLINUX_NAME = "vmlinux"
INITRAMFS_NAME = "initramfs.img"


@dataclass(frozen=True, kw_only=True)
class ImageManifest:
    """Recipe, agent version, content hash and file sizes of one built image directory."""

    recipe: str
    agent_version: str
    content_hash: str
    suite: str
    packages: list[str]
    kernel_package: str
    kernel_version: str
    disk_mib: int
    built_at: str
    sizes: dict[str, int] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory`` atomically."""
        path = directory / MANIFEST_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, directory: Path) -> ImageManifest | None:
        """The manifest in ``directory``, or None when absent or unreadable."""
        try:
            data = json.loads((directory / MANIFEST_NAME).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def files_present(self, directory: Path) -> bool:
        """True when every file the manifest lists is in ``directory`` with its recorded size."""
        for name, size in self.sizes.items():
            try:
                if (directory / name).stat().st_size != size:
                    return False
            except OSError:
                return False
        return bool(self.sizes)


@dataclass(frozen=True)
class ImageDir:
    """Paths of a built image directory."""

    path: Path

    @property
    def rootfs(self) -> Path:
        """The ext4 golden image."""
        return self.path / ROOTFS_NAME

    @property
    def kernel(self) -> Path:
        """The bzImage for QEMU."""
        return self.path / KERNEL_NAME

    @property
    def vmlinux(self) -> Path:
        """The uncompressed kernel for Firecracker."""
        return self.path / VMLINUX_NAME

    @property
    def initramfs(self) -> Path:
        """The busybox initramfs."""
        return self.path / INITRAMFS_NAME

    @property
    def manifest(self) -> ImageManifest | None:
        """The directory's manifest, if any."""
        return ImageManifest.read(self.path)
