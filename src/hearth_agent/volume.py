"""The user's persistent workspace volume: found by its serial, formatted once, mounted as the
workspace.

    POST   /workspace/volume  {"serial": "..."}  → 200 {"device", "mountpoint", "formatted",
                                                      "mounted", "ms": {"find", "format",
                                                      "mount"}}
                                                 404 volume_not_found; 500 volume_failed
    DELETE /workspace/volume                     → 200 {"unmounted": bool}

The controller hot-plugs the user's volume (a virtio disk whose serial it names) into the running
VM, then asks the agent to mount it where commands run, so the user's repositories outlive the
VM. A blank disk (no ext4 superblock) is formatted first; a formatted one is mounted as it is
(its journal replayed by the kernel if the last VM ended without unmounting). ``DELETE`` syncs and
unmounts before the controller ends the VM; a busy mount is left mounted (synced) and said so.
"""

from __future__ import annotations

import contextlib
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
APPEAR_TIMEOUT_S = 15.0
_APPEAR_POLL_S = 0.02  # a hot-plugged disk is on the critical path of every CLI VM's hand-out
_MAX_SERIAL = 20  # virtio-blk serials are at most 20 bytes


def find_disk(
    serial: str, *, sys_block: Path = SYS_BLOCK, timeout_s: float = APPEAR_TIMEOUT_S
) -> Path:
    """The ``/dev`` node of the disk whose virtio serial is ``serial``, waiting for a hot-plugged
    one to appear; VolumeNotFound after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for disk in sorted(sys_block.glob("vd*")):
            try:
                if (disk / "serial").read_text(encoding="ascii").strip() == serial:
                    return Path("/dev") / disk.name
            except OSError:
                continue
        if time.monotonic() >= deadline:
            raise VolumeNotFound(f"no disk with serial {serial!r} appeared in {timeout_s:g} s")
        time.sleep(_APPEAR_POLL_S)


def has_ext4(device: Path) -> bool:
    """Whether ``device`` holds an ext4 (or ext2/3) superblock."""
    with device.open("rb") as handle:
        handle.seek(EXT4_MAGIC_OFFSET)
        return handle.read(2) == EXT4_MAGIC


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
        return (Route("/workspace/volume", {"POST": self._attach, "DELETE": self._detach}),)

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
        formatted = not has_ext4(device)
        if formatted:
            # A blank qcow2 reads as zeros: nothing to discard, and inode tables and journal
            # need no zeroing up front (seconds instead of minutes for a large volume).
            lazy = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
            _run(["mkfs.ext4", "-q", "-F", "-L", "workspace", "-m", "0", "-E", lazy, str(device)])
        timer.lap("format")
        self._workspace.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(["mount", "-t", "ext4", "-o", "noatime", str(device), str(self._workspace)])
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
