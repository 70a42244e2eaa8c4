"""Looking for secrets on the host's disk, for tests that prove none is kept in clear."""

from __future__ import annotations

from pathlib import Path


def files_holding(root: Path, secret: bytes) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``secret`` (disk overlays, records,
    databases, logs alike)."""
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink() and secret in path.read_bytes()
    ]
