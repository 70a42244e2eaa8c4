"""The small busybox initramfs that loads virtio modules and switches to the ext4 rootfs."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hearth.errors import BuildFailed
from hearth.images.layout import guest_asset
from hearth.tools import require_tool, run_tool

_DYNAMIC_MARKER = b"/lib64/ld-linux"


def static_busybox() -> Path:
    """The host's statically linked busybox (package busybox-static)."""
    path = Path(require_tool("busybox")).resolve()
    if _DYNAMIC_MARKER in path.read_bytes():
        raise BuildFailed(f"{path} is dynamically linked; install busybox-static")
    return path


def build_initramfs(modules_dir: Path, out: Path) -> str:
    """Write a gzip'd newc cpio to ``out`` (byte-reproducible); return its sha256."""
    with tempfile.TemporaryDirectory(prefix="hearth-initramfs-") as tmp:
        root = Path(tmp)
        for name in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
            (root / name).mkdir(parents=True)
        shutil.copyfile(static_busybox(), root / "bin/busybox")
        (root / "bin/busybox").chmod(0o755)
        (root / "init").write_bytes(guest_asset("initramfs-init"))
        (root / "init").chmod(0o755)
        for module in sorted(modules_dir.glob("*.ko")):
            shutil.copyfile(module, root / "lib/modules" / module.name)
        for path in [root, *root.rglob("*")]:
            os.utime(path, (0, 0), follow_symlinks=False)
        entries = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        listing = ("\n".join([".", *entries]) + "\n").encode()
        archive = run_tool(
            ["cpio", "--create", "--format=newc", "--reproducible", "--owner=0:0", "--quiet"],
            what="pack the initramfs",
            cwd=root,
            input_bytes=listing,
        ).stdout
    if not archive:
        raise BuildFailed("cpio produced an empty initramfs")
    compressed = gzip.compress(archive, compresslevel=6, mtime=0)
    out.write_bytes(compressed)
    return hashlib.sha256(compressed).hexdigest()
