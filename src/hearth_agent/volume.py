"""The user's persistent workspace volume: found by its serial, formatted once, mounted as the
workspace.

    POST   /workspace/volume  {"serial": "..."}  → 200 {"device", "mountpoint", "formatted",
                                                      "mounted", "ms": {"find", "format",
                                                      "mount"}}
                                                 404 volume_not_found; 500 volume_failed
    DELETE /workspace/volume                     → 200 {"unmounted": bool}
    POST   /workspace/volume/sync                → 200 {"synced": true}

The controller gives the running VM the user's volume (a virtio disk whose serial it names: the VM's
volume slot, whose empty disk then reads the volume, or a hot-plugged disk), then asks the agent to
mount it where commands run, so the user's repositories outlive the VM. What the kernel cached of
the disk is dropped first. A blank disk (no ext4 superblock) is formatted first; a formatted one is
mounted as it is (its journal replayed by the kernel if the last VM ended without unmounting).
``DELETE`` syncs and unmounts before the controller ends the VM; a busy mount is left mounted
(synced) and said so. ``sync`` writes what the guest caches to the disks before the VM is
hibernated: its saved memory holds those pages, and a hibernated VM that is destroyed without
waking would lose them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from hearth_agent.errors import InvalidInput, VolumeFailed, VolumeNotFound
from hearth_agent.log import JsonLogger
from hearth_agent.routing import Request, Response, Route, json_response, read_json

SYS_BLOCK = Path("/sys/block")
EXT4_MAGIC_OFFSET = 1080
EXT4_MAGIC = b"\x53\xef"
_SUPERBLOCK_READ = 4096  # the first block: the superblock lies at 1024
BLKFLSBUF = 0x1261  # <linux/fs.h>: flush and invalidate a block device's buffers
_MS_NOATIME = 1024  # <sys/mount.h>
try:  # loaded as the agent starts (in a template, before any clone exists)
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None
APPEAR_TIMEOUT_S = 15.0
_APPEAR_POLL_S = 0.02  # a hot-plugged disk is on the critical path of every CLI VM's hand-out
_MAX_SERIAL = 20  # virtio-blk serials are at most 20 bytes


def disk_serials(sys_block: Path = SYS_BLOCK) -> dict[str, str]:
    """The serial of each virtio disk present now, by device name (empty: no serial)."""
    found = {}
    # listdir, not glob: no pattern to compile on the hand-out's path.
    for name in sorted(os.listdir(sys_block)):
        if name.startswith("vd"):
            try:
                found[name] = (sys_block / name / "serial").read_text(encoding="ascii").strip()
            except OSError:
                continue
    return found


def find_disk(
    serial: str, *, sys_block: Path = SYS_BLOCK, timeout_s: float = APPEAR_TIMEOUT_S
) -> Path:
    """The ``/dev`` node of the disk whose virtio serial is ``serial``, waiting for a hot-plugged
    one to appear; VolumeNotFound after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name, found in disk_serials(sys_block).items():
            if found == serial:
                return Path("/dev") / name
        if time.monotonic() >= deadline:
            raise VolumeNotFound(f"no disk with serial {serial!r} appeared in {timeout_s:g} s")
        time.sleep(_APPEAR_POLL_S)


def drop_cached(device: Path) -> None:
    """Forget what the kernel cached of ``device`` (``BLKFLSBUF``). The volume slot's disk read
    zeros until the volume took it, and a clone restored from a template still caches what the
    template's kernel read of it then. VolumeFailed if the kernel refuses: reading stale zeros
    would take the user's workspace for a blank disk."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
        finally:
            os.close(fd)
    except OSError as exc:
        raise VolumeFailed(f"cannot drop the cached blocks of {device}: {exc}") from exc


def has_ext4(device: Path) -> bool:
    """Whether ``device`` holds an ext4 (or ext2/3) superblock, read from the disk itself
    (``O_DIRECT``: no cached block decides whether a workspace gets formatted)."""
    buffer = mmap.mmap(-1, _SUPERBLOCK_READ)  # page-aligned, as O_DIRECT needs
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            os.preadv(fd, [buffer], 0)
        finally:
            os.close(fd)
        return buffer[EXT4_MAGIC_OFFSET : EXT4_MAGIC_OFFSET + 2] == EXT4_MAGIC
    finally:
        buffer.close()


def mount_ext4(device: Path, mountpoint: Path) -> None:
    """``mount -t ext4 -o noatime``, as the ``mount(2)`` call itself where ctypes loads: in a
    clone just restored under TCG, a ``mount`` process costs ≈ 0.1 s (all its code translated
    anew), on the critical path of every hand-out."""
    if _LIBC is None:
        _run(["mount", "-t", "ext4", "-o", "noatime", str(device), str(mountpoint)])
        return
    done = _LIBC.mount(os.fsencode(device), os.fsencode(mountpoint), b"ext4", _MS_NOATIME, None)
    if done != 0:
        error = ctypes.get_errno()
        raise VolumeFailed(f"mount of {device} at {mountpoint} failed: {os.strerror(error)}")


def mounted_at(mountpoint: Path, *, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The device mounted at ``mountpoint``, if any."""
    for line in mounts.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == str(mountpoint):
            return fields[0]
    return None


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeFailed(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise VolumeFailed(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[:300]}")


class _Timer:
    """Milliseconds spent in each named step, in order."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.laps: dict[str, int] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round((now - self._last) * 1000)
        self._last = now


class VolumeRoutes:
    """Mounts the workspace volume at ``workspace``."""

    def __init__(self, *, workspace: Path, logger: JsonLogger) -> None:
        self._workspace = workspace
        self._logger = logger

    def routes(self) -> tuple[Route, ...]:
        """The routes to mount in the app's table (both need the bearer token)."""
        return (
            Route("/workspace/volume", {"POST": self._attach, "DELETE": self._detach}),
            Route("/workspace/volume/sync", {"POST": self._sync}),
        )

    def survey(self, *, sys_block: Path = SYS_BLOCK) -> None:
        """Look at the disks once and log them, in a VM with a disk beside its root disk (a CLI
        VM's volume slot): done when the VM is claimed, which for a pooled clone is before its
        hand-out, so that under TCG the code of that look (the guest's own and its kernel's,
        translated anew in every clone: ≈ 45 ms) is ready when the workspace's mount needs it."""
        if not (sys_block / "vdb").exists():
            return
        started = time.monotonic()
        serials = disk_serials(sys_block)
        self._logger.info(
            "disks_surveyed", serials=serials, ms=round((time.monotonic() - started) * 1000)
        )

    def _attach(self, request: Request, params: Mapping[str, str]) -> Response:
        body = read_json(request)
        serial = body.get("serial") if isinstance(body, dict) else None
        if not isinstance(serial, str) or not 1 <= len(serial) <= _MAX_SERIAL:
            raise InvalidInput(f"field 'serial' must be a string of 1 to {_MAX_SERIAL} characters")
        timer = _Timer()
        device = find_disk(serial)
        timer.lap("find")
        current = mounted_at(self._workspace)
        if current == str(device):
            return json_response(200, self._answer(device, formatted=False, ms=timer.laps))
        if current is not None:
            raise VolumeFailed(f"{current} is already mounted at {self._workspace}")
        drop_cached(device)
        formatted = not has_ext4(device)
        if formatted:
            # A blank qcow2 reads as zeros: nothing to discard, and inode tables and journal
            # need no zeroing up front (seconds instead of minutes for a large volume).
            lazy = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
            _run(["mkfs.ext4", "-q", "-F", "-L", "workspace", "-m", "0", "-E", lazy, str(device)])
        timer.lap("format")
        self._workspace.mkdir(mode=0o700, parents=True, exist_ok=True)
        mount_ext4(device, self._workspace)
        os.chmod(self._workspace, 0o700)
        if formatted:
            # The workspace starts empty, as without a volume (e2fsck makes it again if needed).
            with contextlib.suppress(OSError):
                (self._workspace / "lost+found").rmdir()
        timer.lap("mount")
        self._logger.info(
            "workspace_volume_mounted", device=str(device), formatted=formatted, ms=timer.laps
        )
        return json_response(200, self._answer(device, formatted=formatted, ms=timer.laps))

    def _answer(self, device: Path, *, formatted: bool, ms: dict[str, int]) -> dict[str, object]:
        return {
            "device": str(device),
            "mountpoint": str(self._workspace),
            "formatted": formatted,
            "mounted": True,
            "ms": ms,
        }

    def _sync(self, request: Request, params: Mapping[str, str]) -> Response:
        started = time.monotonic()
        os.sync()
        self._logger.info("workspace_synced", ms=round((time.monotonic() - started) * 1000))
        return json_response(200, {"synced": True})

    def _detach(self, request: Request, params: Mapping[str, str]) -> Response:
        os.sync()
        if mounted_at(self._workspace) is None:
            return json_response(200, {"unmounted": False})
        try:
            _run(["umount", str(self._workspace)])
        except VolumeFailed as exc:  # busy: commands still run in it; it is synced
            self._logger.warning("workspace_volume_busy", error=exc.message)
            return json_response(200, {"unmounted": False, "synced": True})
        self._logger.info("workspace_volume_unmounted")
        return json_response(200, {"unmounted": True})
