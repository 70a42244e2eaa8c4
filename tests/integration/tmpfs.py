"""A small tmpfs for a test, so that a disk runs out of space for real (needs root: skipped
where ``mount`` is refused)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs_at(mountpoint: Path, *, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``24m``) mounted at the existing directory ``mountpoint`` for the
    block (over what it held), unmounted after."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mountpoint],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=False)
