"""Staging entries: an upload's temporary file or an archive's temporary directory, made next
to where it goes, and told apart by name from the user's files and from what a dead agent left.

An entry is named ``.hearth-upload-<boot>-<pid>-<random>``: the kernel's boot id (16 hex digits)
and the process id of the agent that made it. This process registers each of its names before
the entry is made and forgets it only once the entry is renamed into place or removed, so an
entry found in a directory is

- in flight: registered here, or made by another agent process of this boot that still runs
  (hidden from listings and downloads, never touched);
- left over: any other name of that form, or of the form agents used before (``<random>``
  alone): its agent crashed or was restarted mid-upload (removed where it is found);
- the user's: any other name, ``.hearth-upload-notes`` say (shown like any file).

Staging entries can be in any directory of the workspace (the deepest that existed on an
upload's path), and the workspace is the user's volume, mounted after the agent starts and
moved from VM to VM: rather than walk it, the agent removes leftovers where it next meets them,
in a directory it lists, downloads, or stages an upload in.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

STAGING_PREFIX = ".hearth-upload-"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_NAME = re.compile(
    re.escape(STAGING_PREFIX) + r"(?:(?P<boot>[0-9a-f]{16})-(?P<pid>[1-9][0-9]{0,9})-)?[0-9a-f]{16}"
)


class Staged(enum.Enum):
    """What an entry with a staging entry's name is, to this process."""

    USER_FILE = "user_file"  # not an agent's name: the user's own
    IN_FLIGHT = "in_flight"  # an upload still running here or in another live agent process
    LEFT_OVER = "left_over"  # its upload ended with its agent: safe to remove


class StagingEntries:
    """The staging entries of one agent process: fresh names, and what a found one is."""

    def __init__(self, *, boot: str, pid: int) -> None:
        self.boot = boot
        self.pid = pid
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def of_this_process(cls) -> StagingEntries:
        """The staging entries of the running process."""
        try:
            boot = BOOT_ID.read_text(encoding="ascii").strip().replace("-", "")[:16]
        except OSError:
            boot = ""
        if not re.fullmatch(r"[0-9a-f]{16}", boot):
            # No boot id (not Linux): another process's entries then count as of this boot.
            boot = "0" * 16
        return cls(boot=boot, pid=os.getpid())

    @contextlib.contextmanager
    def entry(self) -> Iterator[str]:
        """A fresh name, in flight for the block: the block makes the entry, and renames or
        removes it before it ends."""
        name = f"{STAGING_PREFIX}{self.boot}-{self.pid}-{secrets.token_hex(8)}"
        with self._lock:
            self._in_flight.add(name)
        try:
            yield name
        finally:
            with self._lock:
                self._in_flight.discard(name)

    def kind(self, name: str) -> Staged:
        """What the entry called ``name`` is (see the module's docstring)."""
        if not name.startswith(STAGING_PREFIX):
            return Staged.USER_FILE
        match = _NAME.fullmatch(name)
        if match is None:
            return Staged.USER_FILE
        with self._lock:
            if name in self._in_flight:
                return Staged.IN_FLIGHT
        pid = int(match["pid"] or 0)  # 0: a name of the old form, without its process
        if match["boot"] == self.boot and pid not in (0, self.pid) and _running(pid):
            return Staged.IN_FLIGHT
        return Staged.LEFT_OVER

    def user_entries(
        self, dir_fd: int, entries: Iterable[os.DirEntry[str]]
    ) -> list[os.DirEntry[str]]:
        """The user's ``entries`` of directory ``dir_fd``, in flight ones left out; the
        leftovers among them are removed."""
        kept = []
        for entry in entries:
            kind = self.kind(entry.name)
            if kind is Staged.USER_FILE:
                kept.append(entry)
            elif kind is Staged.LEFT_OVER:
                _remove(dir_fd, entry)
        return kept

    def sweep(self, dir_fd: int) -> None:
        """Remove the leftovers in directory ``dir_fd``."""
        with os.scandir(dir_fd) as entries:
            found = [entry for entry in entries if entry.name.startswith(STAGING_PREFIX)]
        self.user_entries(dir_fd, found)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(dir_fd: int, entry: os.DirEntry[str]) -> None:
    # Best effort: whatever stays is removed the next time the directory is met.
    with contextlib.suppress(OSError):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.name, dir_fd=dir_fd)
        else:
            os.unlink(entry.name, dir_fd=dir_fd)


# One per process: the names in flight are the process's, whichever workspace they are in.
STAGING = StagingEntries.of_this_process()
