"""The guest kernel: Debian's cloud kernel, its virtio modules, and an uncompressed vmlinux."""

from __future__ import annotations

import lzma
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import BuildFailed
from hearth.tools import run_tool

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Loaded by the initramfs in rounds (no modules.dep ships), so order does not matter.
VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio-rng",
    "virtio_mmio",
)
_COMPRESSED_PAYLOADS = (
    ("lz4", b"\x02\x21\x4c\x18"),
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
)


@dataclass(frozen=True)
class Kernel:
    """A guest kernel unpacked in the cache."""

    package: str
    version: str
    directory: Path

    @property
    def vmlinuz(self) -> Path:
        """The compressed bzImage QEMU boots."""
        return self.directory / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        """The uncompressed ELF kernel Firecracker boots."""
        return self.directory / "vmlinux"

    @property
    def modules_dir(self) -> Path:
        """The virtio modules the initramfs loads."""
        return self.directory / "modules"


def resolve_kernel_package() -> tuple[str, str]:
    """The concrete kernel package behind the cloud meta-package and its candidate version."""
    depends = run_tool(
        ["apt-cache", "depends", KERNEL_META_PACKAGE], what="resolve the guest kernel"
    ).stdout.decode()
    match = re.search(r"Depends:\s+(linux-image-\S+)", depends)
    if match is None:
        raise BuildFailed(
            f"apt does not know {KERNEL_META_PACKAGE}; run apt-get update on the host first"
        )
    package = match.group(1)
    policy = run_tool(["apt-cache", "policy", package], what="resolve the guest kernel").stdout
    version = re.search(r"Candidate:\s+(\S+)", policy.decode())
    if version is None or version.group(1) == "(none)":
        raise BuildFailed(f"apt has no installable version of {package}")
    return package, version.group(1)


def fetch_kernel(cache_dir: Path) -> Kernel:
    """Download and unpack the guest kernel into ``cache_dir/kernel/`` unless already there."""
    package, version = resolve_kernel_package()
    target = cache_dir / "kernel" / f"{package}_{version}"
    kernel = Kernel(package=package, version=version, directory=target)
    if (target / "COMPLETE").exists():
        return kernel
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".kernel-") as tmp:
        work = Path(tmp)
        run_tool(
            ["apt-get", "download", f"{package}={version}"],
            what=f"download {package}",
            cwd=work,
            timeout=900,
        )
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise BuildFailed(f"apt-get download {package} produced {len(debs)} packages")
        unpacked = work / "root"
        run_tool(["dpkg-deb", "-x", debs[0], unpacked], what=f"unpack {package}")
        staged = work / "out"
        (staged / "modules").mkdir(parents=True)
        vmlinuz = next(iter((unpacked / "boot").glob("vmlinuz-*")), None)
        if vmlinuz is None:
            raise BuildFailed(f"{package} contains no boot/vmlinuz-*")
        shutil.copyfile(vmlinuz, staged / "vmlinuz")
        for name in VIRTIO_MODULES:
            found = next(iter(unpacked.glob(f"lib/modules/*/kernel/**/{name}.ko")), None)
            if found is None:
                raise BuildFailed(f"{package} lacks the {name} module")
            shutil.copyfile(found, staged / "modules" / f"{name}.ko")
        extract_vmlinux(staged / "vmlinuz", staged / "vmlinux")
        (staged / "COMPLETE").write_text(f"{package} {version}\n")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return kernel


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """Find the compressed payload inside a bzImage and write the ELF kernel it holds."""
    data = bzimage.read_bytes()
    for kind, magic in _COMPRESSED_PAYLOADS:
        start = data.find(magic)
        while start != -1:
            elf = _decompress(kind, data[start:])
            if elf[:4] == b"\x7fELF":
                out.write_bytes(elf)
                return
            start = data.find(magic, start + 1)
    raise BuildFailed(f"{bzimage}: found no compressed ELF kernel inside")


def _decompress(kind: str, payload: bytes) -> bytes:
    try:
        if kind == "gzip":
            return zlib.decompressobj(wbits=31).decompress(payload)
        if kind == "xz":
            return lzma.LZMADecompressor().decompress(payload)
    except (zlib.error, lzma.LZMAError):
        return b""
    # The lz4 CLI decodes the kernel's legacy frames and stops with an error at the trailing
    # bytes after them; what it wrote before that is the kernel (checked by the ELF magic).
    proc = run_tool(["lz4", "-dc"], what="decompress the kernel", input_bytes=payload, check=False)
    return proc.stdout
