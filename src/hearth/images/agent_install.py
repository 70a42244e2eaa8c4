"""install-agent, verify and rollback on golden images: never mounted, never changed in place.

Every change is made on a sparse copy next to the image, checked (e2fsck + verify), and only then
renamed over the image; the previous image is kept as a hard link in ``<image>.backups/``, where
the newest ``KEEP_BACKUPS`` are kept (each is a whole image: ~1 GB for a Browser image). A failure
at any step leaves the original image byte-for-byte untouched. Edits, rollbacks and a build's
publish into the same directory take turns (``exclusive_image_dir``), and an edit whose image was
replaced behind its back meanwhile is abandoned rather than renamed over the newer image.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import ImageError, ImageNoSpace, ImageReadOnly, ImageVerifyFailed, NoBackup
from hearth.images.ext4 import Edit, Ext4Image, allocated_bytes, check_ext4
from hearth.images.layout import (
    AGENT_MANIFEST,
    GUEST_PYTHON,
    UNIT_LINK,
    UNIT_PATH,
    AgentPayload,
    build_payload,
    payload_edits,
)
from hearth.images.locks import exclusive_image_dir
from hearth.logging import get_logger
from hearth.tools import run_tool

_log = get_logger("images.agent_install")

_SPACE_MARGIN = 64 * 1024 * 1024
# Backups kept per image: rollback restores the newest, and one more is left to go back to
# should the newest be the broken one (every edit of the image adds one: install-agent,
# trust-ca, an agent rollout).
KEEP_BACKUPS = 2


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify``: what agent is installed and what is missing or wrong."""

    image: Path
    agent_version: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing or wrong."""
        return not self.problems


@dataclass(frozen=True)
class InstallResult:
    """The outcome of ``install_agent``."""

    image: Path
    agent_version: str
    changed: bool
    backup: Path | None


def backups_dir(image: Path) -> Path:
    """Where backups of ``image`` are kept."""
    return image.with_name(image.name + ".backups")


def list_backups(image: Path) -> list[Path]:
    """The image's backups, oldest first."""
    directory = backups_dir(image)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".ext4")


def verify_image(image: Path, payload: AgentPayload | None = None) -> VerifyReport:
    """Check the agent files, unit, enabled symlink, init and version inside ``image``."""
    payload = payload or build_payload()
    ext4 = Ext4Image(image)
    problems: list[str] = []
    raw_manifest = ext4.read(AGENT_MANIFEST)
    installed_version: str | None = None
    if raw_manifest is None:
        problems.append(f"agent manifest {AGENT_MANIFEST} is missing")
    else:
        try:
            installed_version = str(json.loads(raw_manifest)["agent_version"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"agent manifest {AGENT_MANIFEST} is unreadable")
    if installed_version is not None and installed_version != payload.version:
        problems.append(f"agent version is {installed_version}, expected {payload.version}")
    for path, data in sorted(payload.files.items()):
        found = ext4.read(path)
        if found is None:
            problems.append(f"{path} is missing")
        elif found != data:
            problems.append(f"{path} differs from agent {payload.version}")
    link = ext4.stat(UNIT_LINK)
    if link is None or link.kind != "symlink":
        problems.append(f"{UNIT_LINK} (the unit's enabled symlink) is missing")
    elif link.link_target != UNIT_PATH:
        problems.append(f"{UNIT_LINK} points at {link.link_target}, expected {UNIT_PATH}")
    if ext4.stat(GUEST_PYTHON) is None:
        problems.append(f"{GUEST_PYTHON} is missing (the agent needs the guest's python3)")
    return VerifyReport(image=image, agent_version=installed_version, problems=problems)


def _require_writable(image: Path) -> None:
    st = image.stat()
    if not st.st_mode & stat.S_IWUSR:
        raise ImageReadOnly(f"{image} is read-only (mode {stat.S_IMODE(st.st_mode):o})")
    if not os.access(image.parent, os.W_OK):
        raise ImageReadOnly(f"{image.parent} is not writable")


def _require_space(image: Path, needed: int) -> None:
    free = shutil.disk_usage(image.parent).free
    if free < needed + _SPACE_MARGIN:
        raise ImageNoSpace(
            f"{image.parent} has {free // 2**20} MiB free; changing {image.name} safely needs "
            f"{(needed + _SPACE_MARGIN) // 2**20} MiB"
        )


def _sparse_copy(source: Path, dest: Path) -> None:
    run_tool(
        ["cp", "--sparse=always", "--reflink=auto", source, dest],
        what=f"copy {source.name}",
        error=ImageError,
    )


def _swap_in(image: Path, candidate: Path, *, keep_backup: bool) -> Path | None:
    """Rename ``candidate`` over ``image``, keeping the old one as a hard-linked backup."""
    backup: Path | None = None
    if keep_backup:
        directory = backups_dir(image)
        directory.mkdir(mode=0o700, exist_ok=True)
        # One reading of the clock for both parts: read twice, a second could turn in between
        # and a newer backup sort before an older one (then pruned as the oldest).
        seconds, nanoseconds = divmod(time.time_ns(), 10**9)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))
        backup = directory / f"{stamp}-{nanoseconds:09d}.ext4"
        try:
            os.link(image, backup)
        except OSError:
            _sparse_copy(image, backup)
    os.replace(candidate, image)
    dir_fd = os.open(image.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if keep_backup:
        _prune_backups(image)
    return backup


def _prune_backups(image: Path) -> None:
    """Remove all but the newest ``KEEP_BACKUPS`` backups of ``image``. The image is already
    swapped in, so a backup that cannot be removed is logged, not raised."""
    for old in list_backups(image)[:-KEEP_BACKUPS]:
        try:
            old.unlink(missing_ok=True)
        except OSError as exc:
            _log.warning("image_backup_not_pruned", backup=str(old), error=str(exc))


def edit_image(
    image: Path, edits: list[Edit], *, check: Callable[[Path], None] | None = None
) -> Path | None:
    """Apply ``edits`` to a sparse copy of ``image``, e2fsck and ``check`` it (which raises if it
    is wrong), then swap it in keeping the old image as a backup; returns the backup. A failure
    at any step leaves ``image`` untouched."""
    _require_writable(image)
    with exclusive_image_dir(image.parent):
        _require_space(image, allocated_bytes(image))
        candidate = image.with_name(f".{image.name}.edit-{os.getpid()}")
        try:
            copied = _identity(image)
            _sparse_copy(image, candidate)
            edited = Ext4Image(candidate)
            edited.apply(edits)
            edited.fsck()
            if check is not None:
                check(candidate)
            if _identity(image) != copied:
                raise ImageError(
                    f"{image} was replaced, written or removed while it was being edited (by "
                    "a writer that does not take its directory's lock); the edit was abandoned "
                    "and the image left as that writer made it: run it again"
                )
            return _swap_in(image, candidate, keep_backup=True)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise


def _identity(image: Path) -> tuple[int, int, int, int] | None:
    """What tells one image file from another, or from itself once written: device, inode,
    size and modification time (None once it is gone)."""
    try:
        st = image.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def install_agent(image: Path, payload: AgentPayload | None = None) -> InstallResult:
    """Install or upgrade the agent in ``image``; a no-op when it is already up to date."""
    payload = payload or build_payload()
    check_ext4(image)
    if verify_image(image, payload).ok:
        return InstallResult(image=image, agent_version=payload.version, changed=False, backup=None)

    def verified(candidate: Path) -> None:
        report = verify_image(candidate, payload)
        if not report.ok:
            raise ImageVerifyFailed(
                f"agent install did not verify: {'; '.join(report.problems)}",
                missing=report.problems,
            )

    backup = edit_image(image, payload_edits(payload), check=verified)
    return InstallResult(image=image, agent_version=payload.version, changed=True, backup=backup)


def rollback_image(image: Path) -> Path:
    """Restore the latest backup over ``image``; returns the backup used. Repeatable."""
    with exclusive_image_dir(image.parent):
        backups = list_backups(image)  # under the lock: an edit that ran before added the newest
        if not backups:
            raise NoBackup(f"{image} has no backup in {backups_dir(image)}")
        latest = backups[-1]
        check_ext4(latest)
        if image.exists():
            _require_writable(image)
        _require_space(image, allocated_bytes(latest))
        candidate = image.with_name(f".{image.name}.rollback-{os.getpid()}")
        try:
            _sparse_copy(latest, candidate)
            _swap_in(image, candidate, keep_backup=False)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        return latest
