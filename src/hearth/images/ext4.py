"""Reading and editing ext4 images without mounting them, through e2fsprogs' debugfs."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from hearth.errors import ImageError, ImageNoSpace, NotAnImage
from hearth.tools import run_tool

_SUPERBLOCK_OFFSET = 1024
_MAGIC_OFFSET = _SUPERBLOCK_OFFSET + 56
_EXT_MAGIC = b"\x53\xef"
_STAT_LINE = re.compile(r"Type:\s+(\S+)\s+Mode:\s+(\d+)")
_OWNER_LINE = re.compile(r"User:\s+(\d+)\s+Group:\s+(\d+).*Size:\s+(\d+)")
_LINK_LINE = re.compile(r'Fast link dest:\s+"(.*)"')
_NO_SPACE = ("Could not allocate", "No free space", "Could not expand")

EntryKind = Literal["regular", "directory", "symlink", "other"]


@dataclass(frozen=True)
class Entry:
    """What debugfs says about one path inside an image."""

    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    link_target: str | None = None


@dataclass(frozen=True)
class MakeDir:
    """Create a directory (if missing) and set its mode and root ownership."""

    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class WriteFile:
    """Write (or replace) a regular file with the given bytes, mode and root ownership."""

    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    """Create (or replace) a symbolic link."""

    path: str
    target: str


Edit = MakeDir | WriteFile | Symlink


def check_ext4(path: Path) -> None:
    """Raise NotAnImage unless ``path`` is a regular file holding an ext2/3/4 filesystem."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotAnImage(f"{path}: no such file") from None
    except OSError as exc:
        raise NotAnImage(f"{path}: cannot read: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise NotAnImage(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            fh.seek(_MAGIC_OFFSET)
            magic = fh.read(2)
    except OSError as exc:
        raise NotAnImage(f"{path}: cannot read: {exc.strerror}") from exc
    if magic != _EXT_MAGIC:
        raise NotAnImage(f"{path}: not an ext4 filesystem image (no ext superblock)")


class Ext4Image:
    """An ext4 image file, read and edited through debugfs; never mounted."""

    def __init__(self, path: Path) -> None:
        check_ext4(path)
        self.path = path

    def _debugfs(self, request: str, *, what: str) -> tuple[str, str]:
        proc = run_tool(
            ["debugfs", "-R", request, self.path], what=what, error=ImageError, timeout=60
        )
        return proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")

    def stat(self, path: str) -> Entry | None:
        """Describe ``path`` inside the image, or None when it does not exist."""
        out, err = self._debugfs(f"stat {_quote(path)}", what=f"stat {path}")
        match = _STAT_LINE.search(out)
        if match is None:
            if "not found" in err or "not found" in out:
                return None
            raise ImageError(f"debugfs could not stat {path} in {self.path}: {err.strip()}")
        owner = _OWNER_LINE.search(out)
        link = _LINK_LINE.search(out)
        raw_kind = match.group(1)
        kind: EntryKind = (
            raw_kind if raw_kind in ("regular", "directory", "symlink") else "other"  # type: ignore[assignment]
        )
        return Entry(
            path=path,
            kind=kind,
            mode=int(match.group(2), 8),
            uid=int(owner.group(1)) if owner else -1,
            gid=int(owner.group(2)) if owner else -1,
            size=int(owner.group(3)) if owner else -1,
            link_target=link.group(1) if link else None,
        )

    def read(self, path: str) -> bytes | None:
        """The bytes of a regular file inside the image, or None when it does not exist."""
        entry = self.stat(path)
        if entry is None or entry.kind != "regular":
            return None
        proc = run_tool(
            ["debugfs", "-R", f"cat {_quote(path)}", self.path],
            what=f"read {path}",
            error=ImageError,
            timeout=60,
        )
        return proc.stdout

    def apply(self, edits: list[Edit]) -> None:
        """Apply the edits in one debugfs session; raise on any error debugfs reports."""
        with tempfile.TemporaryDirectory(prefix="hearth-ext4-") as tmp:
            script: list[str] = []
            for index, edit in enumerate(edits):
                if isinstance(edit, MakeDir):
                    if self.stat(edit.path) is None:
                        script.append(f"mkdir {_quote(edit.path)}")
                    script += _own(edit.path, 0o040000 | edit.mode)
                elif isinstance(edit, WriteFile):
                    local = Path(tmp, f"f{index}")
                    local.write_bytes(edit.data)
                    if self.stat(edit.path) is not None:
                        script.append(f"rm {_quote(edit.path)}")
                    script.append(f"write {_quote(str(local))} {_quote(edit.path)}")
                    script += _own(edit.path, 0o100000 | edit.mode)
                else:
                    if self.stat(edit.path) is not None:
                        script.append(f"rm {_quote(edit.path)}")
                    parent = str(PurePosixPath(edit.path).parent)
                    name = PurePosixPath(edit.path).name
                    script.append(f"cd {_quote(parent)}")
                    script.append(f"symlink {_quote(name)} {_quote(edit.target)}")
                    script.append("cd /")
            script_path = Path(tmp, "script")
            script_path.write_text("\n".join(script) + "\n")
            proc = run_tool(
                ["debugfs", "-w", "-f", script_path, self.path],
                what=f"edit {self.path}",
                error=ImageError,
                timeout=300,
            )
        problems = [
            line
            for line in proc.stderr.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("debugfs ")
        ]
        if any(marker in line for line in problems for marker in _NO_SPACE):
            raise ImageNoSpace(f"{self.path}: the filesystem inside the image is full")
        if problems:
            raise ImageError(f"debugfs failed editing {self.path}: {'; '.join(problems[:5])}")

    def fsck(self) -> None:
        """Check the filesystem read-only (``e2fsck -fn``); raise if it is not clean."""
        proc = run_tool(
            ["e2fsck", "-fn", self.path], what="e2fsck", error=ImageError, timeout=300, check=False
        )
        if proc.returncode != 0:
            output = proc.stdout.decode(errors="replace").strip().splitlines()[-5:]
            raise ImageError(f"{self.path}: filesystem check failed: {' / '.join(output)}")


def _own(path: str, mode: int) -> list[str]:
    quoted = _quote(path)
    return [f"sif {quoted} mode 0{mode:o}", f"sif {quoted} uid 0", f"sif {quoted} gid 0"]


def _quote(path: str) -> str:
    if any(ch in path for ch in ' "\n\t'):
        raise ImageError(f"unsupported character in image path {path!r}")
    return path


def allocated_bytes(path: Path) -> int:
    """Bytes a (possibly sparse) file really occupies on disk."""
    return os.stat(path).st_blocks * 512
