"""The install root of ``--updates DIR``: releases side by side, the ``hearth_agent`` symlink that
picks one, and beside them the agent's PID, the guard's lock and the last update's result.

    DIR/                             on the agent's PYTHONPATH
      hearth_agent -> releases/0.1.1-0123456789ab/hearth_agent
                                     (the image's real directory until the first update)
      releases/0.1.0-base/hearth_agent/     the image's own build, moved here by the first update
      releases/0.1.1-0123456789ab/hearth_agent/
      agent.pid                      the running agent's PID, written at its start
      update.lock                    {"pid", "from", "to", "release", "previous"} while a guard runs
      update-result.json             {"from", "to", "release", "ok", "error", "at"}, the last update

A release is written under a hidden staging name and renamed into place whole; files are written
beside their target and renamed; the symlink is made under a temporary name and renamed over the
old one. Python (started by init) therefore finds the old release or the new one, never neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hearth_agent.errors import UpdateFailed
from hearth_agent.processes import is_guard_of

PACKAGE = "hearth_agent"
RELEASES = "releases"
PID_FILE = "agent.pid"
LOCK_FILE = "update.lock"
RESULT_FILE = "update-result.json"
_STAGE_PREFIX = ".stage-"
_RELEASE_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,99}")


def now_iso() -> str:
    """The current UTC time as ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Release:
    """One release directory: ``DIR/releases/<name>``, which holds a ``hearth_agent`` package."""

    name: str
    path: Path

    @property
    def package(self) -> Path:
        """The release's ``hearth_agent`` directory."""
        return self.path / PACKAGE


class InstallRoot:
    """The directory ``--updates`` names; see the module docstring for its layout."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def package_link(self) -> Path:
        """``DIR/hearth_agent``: the package Python imports, a symlink after the first update."""
        return self.path / PACKAGE

    def release(self, name: str) -> Release:
        """The release called ``name`` (which need not exist yet)."""
        if not _RELEASE_NAME.fullmatch(name):
            raise UpdateFailed(f"{name!r} is not a release name")
        return Release(name=name, path=self.path / RELEASES / name)

    def runs(self, package_dir: Path) -> bool:
        """Whether ``package_dir`` (the running agent's code) is what ``DIR/hearth_agent`` is."""
        try:
            return self.package_link.resolve(strict=True) == package_dir.resolve(strict=True)
        except OSError:
            return False

    def current(self) -> Release | None:
        """The release ``DIR/hearth_agent`` points at; None while it is the image's directory."""
        if not self.package_link.is_symlink():
            return None
        target = Path(os.readlink(self.package_link))
        parts = target.parts
        if target.is_absolute():
            parts = target.parts[len(self.path.parts) :] if target.is_relative_to(self.path) else ()
        if len(parts) != 3 or parts[0] != RELEASES or parts[2] != PACKAGE:
            raise UpdateFailed(f"{self.package_link} points at {target}, not at a release")
        return self.release(parts[1])

    def adopt_base(self, version: str) -> Release:
        """The current release; on the first update, the image's directory moved to
        ``releases/<version>-base`` first (the symlink then points there)."""
        current = self.current()
        if current is not None:
            return current
        base = self.release(f"{_safe(version)}-base")
        (self.path / RELEASES).mkdir(mode=0o755, exist_ok=True)
        if base.path.exists():
            shutil.rmtree(base.path)  # left by an adoption cut short; the real directory wins
        base.path.mkdir(mode=0o755)
        os.rename(self.package_link, base.package)
        # Between the rename and the symlink nothing is at DIR/hearth_agent: microseconds.
        self.point_to(base)
        return base

    def stage(self, name: str, files: Mapping[str, bytes]) -> Release:
        """Write ``files`` as release ``name`` (replacing a release of that name) and return it."""
        release = self.release(name)
        staging = self.path / RELEASES / f"{_STAGE_PREFIX}{name}-{os.getpid()}"
        (self.path / RELEASES).mkdir(mode=0o755, exist_ok=True)
        try:
            if staging.exists():
                shutil.rmtree(staging)
            (staging / PACKAGE).mkdir(mode=0o755, parents=True)
            for file_name, data in sorted(files.items()):
                fd = os.open(
                    staging / PACKAGE / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                )
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            if release.path.exists():
                shutil.rmtree(release.path)
            os.rename(staging, release.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return release

    def point_to(self, release: Release) -> None:
        """Make ``DIR/hearth_agent`` a symlink to ``release``'s package, in one rename."""
        temporary = self.path / f".{PACKAGE}.{os.getpid()}.link"
        if temporary.is_symlink():
            temporary.unlink()
        os.symlink(f"{RELEASES}/{release.name}/{PACKAGE}", temporary)
        os.replace(temporary, self.package_link)

    def discard(self, release: Release) -> None:
        """Remove a release that will not be used (the symlink must not point at it)."""
        shutil.rmtree(release.path, ignore_errors=True)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every release (and staging leftover) whose name is not in ``keep``."""
        removed = []
        releases = self.path / RELEASES
        for entry in sorted(releases.iterdir()) if releases.is_dir() else []:
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def write_pid(self, pid: int) -> None:
        """Record the running agent's PID."""
        self._write(PID_FILE, f"{pid}\n".encode())

    def read_pid(self) -> int | None:
        """The PID the last agent to start recorded, if any."""
        try:
            text = (self.path / PID_FILE).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def live_lock(self) -> dict[str, object] | None:
        """The lock of a guard that still runs; a lock whose guard is gone is removed."""
        lock = self._read_json(LOCK_FILE)
        if lock is None:
            return None
        pid = lock.get("pid")
        if isinstance(pid, int) and is_guard_of(pid, self.path):
            return lock
        self._remove(LOCK_FILE)
        return None

    def write_lock(self, lock: Mapping[str, object]) -> None:
        """Mark a guard as running (``lock["pid"]`` is its PID)."""
        self._write(LOCK_FILE, json.dumps(dict(lock)).encode())

    def release_lock(self, pid: int) -> None:
        """Remove the lock if it is the one guard ``pid`` holds."""
        lock = self._read_json(LOCK_FILE)
        if lock is not None and lock.get("pid") == pid:
            self._remove(LOCK_FILE)

    def read_result(self) -> dict[str, object] | None:
        """The last update's result, if any update was ever tried."""
        return self._read_json(RESULT_FILE)

    def write_result(
        self,
        *,
        from_version: str,
        to_version: str,
        release: str,
        ok: bool | None,
        error: str | None,
    ) -> dict[str, object]:
        """Record an update's outcome (``ok`` None while its guard still watches) and return it."""
        result: dict[str, object] = {
            "from": from_version,
            "to": to_version,
            "release": release,
            "ok": ok,
            "error": error,
            "at": now_iso(),
        }
        self._write(RESULT_FILE, json.dumps(result).encode())
        return result

    def _write(self, name: str, data: bytes) -> None:
        temporary = self.path / f".{name}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as out:
                out.write(data)
            os.replace(temporary, self.path / name)
        except BaseException:
            self._remove(temporary.name)
            raise

    def _read_json(self, name: str) -> dict[str, object] | None:
        try:
            value = json.loads((self.path / name).read_bytes())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / name).unlink()


def _safe(text: str) -> str:
    """``text`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^0-9A-Za-z._-]", "_", text) or "unknown"
