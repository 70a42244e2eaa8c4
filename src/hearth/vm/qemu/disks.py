"""Per-VM disks: qcow2 copy-on-write overlays on read-only golden images (never full copies)."""

from __future__ import annotations

from pathlib import Path

from hearth.errors import VmError
from hearth.tools import run_tool


def create_overlay(backing: Path, overlay: Path, *, backing_format: str) -> int:
    """Create ``overlay`` on top of ``backing``; returns the bytes it occupies on disk."""
    run_tool(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing.resolve(),
            "-F",
            backing_format,
            overlay,
        ],
        what=f"create overlay {overlay.name}",
        error=VmError,
        timeout=60,
    )
    return bytes_on_disk(overlay)


def bytes_on_disk(path: Path) -> int:
    """Bytes a file really occupies (sparse-aware)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0
