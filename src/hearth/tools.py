"""Running host programs (debootstrap, debugfs, qemu-img, ...) with their failures translated."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hearth.errors import BuildFailed, HearthError, ToolMissing

_TAIL_LINES = 15
# What ``tail_of_file`` reads at most: a log a guest writes (its serial console) may be huge.
TAIL_READ_BYTES = 64 * 1024
# The controller's own settings, its keys and database URL among them, which no program it runs
# is given.
_CONTROLLER_PREFIX = "HEARTH_"

# Which Debian package provides each host program, so a missing one is named with its fix.
_PACKAGE_OF = {
    "debootstrap": "debootstrap",
    "debugfs": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "cpio": "cpio",
    "lz4": "lz4",
    "busybox": "busybox-static",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "npm": "npm",
    "cp": "coreutils",
}


def require_tool(name: str) -> str:
    """Return the absolute path of a host program, or raise ToolMissing naming its package."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        package = _PACKAGE_OF.get(name, name)
        raise ToolMissing(f"{name} is not installed (apt-get install {package})")
    return found


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    """The last lines of a program's output, for error messages."""
    return "\n".join(text.strip().splitlines()[-lines:])


def tail_of_file(path: Path, lines: int = _TAIL_LINES, *, max_bytes: int = TAIL_READ_BYTES) -> str:
    """The last ``lines`` of the file at ``path``, from its last ``max_bytes`` only (the line
    cut there is dropped), so a log of any size costs one bounded read; OSError as ``open``."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        file.seek(start)
        data = file.read(max_bytes)
    if start:
        data = data[data.find(b"\n") + 1 :]
    return tail(data.decode(errors="replace"), lines)


def tool_env() -> dict[str, str]:
    """The environment host programs run with: the controller's without its ``HEARTH_``
    settings (a build's proxy and npm settings pass, the master key does not)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_CONTROLLER_PREFIX)}


def run_tool(
    args: Sequence[str | Path],
    *,
    what: str,
    error: type[HearthError] = BuildFailed,
    timeout: float = 600.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a host program; on failure raise ``error`` quoting ``what`` and the output's tail."""
    argv = [str(a) for a in args]
    argv[0] = require_tool(argv[0])
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            env=dict(env) if env is not None else tool_env(),
            input=input_bytes,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what}: {Path(argv[0]).name} timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise error(f"{what}: could not run {Path(argv[0]).name}: {exc.strerror}") from exc
    if check and proc.returncode != 0:
        output = tail(proc.stderr.decode(errors="replace") or proc.stdout.decode(errors="replace"))
        raise error(f"{what}: {Path(argv[0]).name} exited {proc.returncode}: {output}")
    return proc
