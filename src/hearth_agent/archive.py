"""Directories in and out of the workspace as tar streams, never held whole in memory.

Out: ``tar_stream`` walks a directory through descriptors (never following a symlink: a link is
archived as a link) and yields the archive block by block, each file read as it is written.

In: ``extract_into`` reads a tar as it arrives (``tarfile``'s stream mode, gzip and the like
detected) and checks every member before it writes it: a name with ``..`` or an absolute name, a
symlink whose target leads out of the workspace (from where it will be), a hard link to anything
but a file earlier in the same archive, a device, fifo or sparse file, or files together over the
cap are refused, and so is a member below a symlink of the archive; headers are bounded before
``tarfile`` reads them (``tar_headers``). Members are written into a staging directory next to
the destination; only a whole, valid archive is then moved into place (a new directory renamed
at once; an existing one merged into, after checking that no member would replace a directory
by a file or the reverse). On any refusal the staging directory is
removed: nothing of the archive is left in the workspace. The guest's python3 (Debian 12's
3.11.2) predates ``tarfile``'s extraction filters, hence these checks of our own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from hearth_agent.bodies import RequestBody
from hearth_agent.errors import (
    FileTooLarge,
    InvalidArchive,
    PathConflict,
    PathOutsideWorkspace,
    StorageError,
)
from hearth_agent.staging import STAGING, StagingEntries
from hearth_agent.tar_headers import BoundedTarFile
from hearth_agent.workspace import DIR_FLAGS, Located, Workspace, make_dirs_at, open_dir_at

BLOCK = 512
COPY_CHUNK = 1024 * 1024
MAX_MEMBERS = 100_000
DEFAULT_DIR_MODE = 0o755
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_MTIME = 2**40  # seconds either side of 1970: past it os.utime overflows


# ---- out ---------------------------------------------------------------------------------


def tar_stream(dir_fd: int, *, staging: StagingEntries = STAGING) -> Iterator[bytes]:
    """The tar (POSIX pax) of everything under directory ``dir_fd``, names relative to it;
    sockets, fifos, devices and uploads in flight are left out (an earlier agent's leftovers
    removed: ``staging``). The caller keeps ``dir_fd``."""
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    stack.append((os.dup(dir_fd), "", _sorted_entries(dir_fd, staging)))
    try:
        while stack:
            fd, prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                os.close(fd)
                stack.pop()
                continue
            yield from _entry_blocks(fd, prefix, entry, stack, staging)
        yield b"\0" * (2 * BLOCK)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _sorted_entries(dir_fd: int, staging: StagingEntries) -> Iterator[os.DirEntry[str]]:
    """The directory's entries by name, without staging entries."""
    with os.scandir(dir_fd) as entries:
        kept = staging.user_entries(dir_fd, entries)
    return iter(sorted(kept, key=lambda entry: entry.name))


def _entry_blocks(
    fd: int,
    prefix: str,
    entry: os.DirEntry[str],
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]],
    staging: StagingEntries,
) -> Iterator[bytes]:
    """One entry's header (and content); a directory is pushed on ``stack`` to walk next."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return  # removed since the directory was read
    info = tarfile.TarInfo(prefix + entry.name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid, info.gid = st.st_uid, st.st_gid
    if stat.S_ISDIR(st.st_mode):
        try:
            child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
        except OSError:
            return
        info.type = tarfile.DIRTYPE
        # On the stack (which ``tar_stream`` closes) before the yield: a client gone at this
        # header must not leave the descriptor open.
        try:
            stack.append((child, f"{info.name}/", _sorted_entries(child, staging)))
        except OSError:
            os.close(child)
            return
        yield _header(info)
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(entry.name, dir_fd=fd)
        yield _header(info)
    elif stat.S_ISREG(st.st_mode):
        try:
            file_fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return
        try:
            info.size = os.fstat(file_fd).st_size
            yield _header(info)
            yield from _exactly(file_fd, info.size)
            if info.size % BLOCK:
                yield b"\0" * (BLOCK - info.size % BLOCK)
        finally:
            os.close(file_fd)


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _exactly(fd: int, size: int) -> Iterator[bytes]:
    """``size`` bytes of the file: what it has, zeros for what it lost since its header (the
    archive stays well-formed if it shrinks while being read; growth is left out)."""
    left = size
    while left > 0:
        chunk = os.read(fd, min(COPY_CHUNK, left))
        if not chunk:
            yield b"\0" * left
            return
        left -= len(chunk)
        yield chunk


# ---- in ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extracted:
    """What an archive brought: its members and the bytes of its files."""

    members: int
    size: int


def extract_into(
    workspace: Workspace,
    located: Located,
    body: RequestBody,
    *,
    shown: str,
    max_bytes: int,
    staging: StagingEntries = STAGING,
) -> Extracted:
    """Extract the tar ``body`` into the directory at ``located`` (made if missing); see the
    module's docstring. The files together may not exceed ``max_bytes``."""
    if located.exists and not located.is_dir:
        raise PathConflict(f"{shown} is not a directory: a tar is extracted into a directory")
    with staging.entry() as stage:
        try:
            staging.sweep(located.dir_fd)
            os.mkdir(stage, 0o700, dir_fd=located.dir_fd)
        except OSError as exc:
            raise StorageError.from_os_error(f"{shown}: cannot stage the archive", exc) from exc
        try:
            stage_fd = open_dir_at(located.dir_fd, stage)
            try:
                extraction = _Extraction(workspace, stage_fd, located.location, shown, max_bytes)
                extraction.run(body)
                if not located.exists:
                    os.fchmod(stage_fd, extraction.root_mode)
            finally:
                os.close(stage_fd)
            _move_into_place(located, stage, shown)
            return Extracted(members=extraction.members, size=extraction.size)
        except OSError as exc:
            raise StorageError.from_os_error(shown, exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(stage, dir_fd=located.dir_fd)


@dataclass
class _Extraction:
    """One archive being written into its staging directory, member by member."""

    workspace: Workspace
    stage_fd: int
    # Where the archive's root will be, as components from the workspace.
    destination: tuple[str, ...]
    shown: str
    max_bytes: int
    members: int = 0
    size: int = 0
    root_mode: int = DEFAULT_DIR_MODE
    files: set[tuple[str, ...]] = field(default_factory=set)
    dirs: dict[tuple[str, ...], tuple[int, float]] = field(default_factory=dict)

    def run(self, body: RequestBody) -> None:
        try:
            with BoundedTarFile.open(fileobj=body, mode="r|*") as archive:  # type: ignore[call-overload]
                while (member := archive.next()) is not None:
                    self._member(archive, member)
        except tarfile.TarError as exc:
            raise InvalidArchive(f"{self.shown}: the body is not a readable tar: {exc}") from exc
        body.drain()  # the archive's end blocks and padding, still under the cap
        if self.members == 0:
            raise InvalidArchive(f"{self.shown}: the archive is empty")
        for parts, (mode, mtime) in sorted(self.dirs.items(), key=lambda item: -len(item[0])):
            fd = self._dir_fd_for(parts)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def _member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise InvalidArchive(f"{self.shown}: the archive has more than {MAX_MEMBERS} members")
        parts = self._parts(member.name, "member")
        if "\0" in member.linkname:
            raise InvalidArchive(f"{self.shown}: member {member.name!r} links to a name with a NUL")
        if not -MAX_MTIME <= member.mtime <= MAX_MTIME:  # also refuses NaN
            raise InvalidArchive(f"{self.shown}: member {member.name!r} has no usable mtime")
        mode = stat.S_IMODE(member.mode) & 0o777
        if member.isdir():
            if parts:
                os.close(self._dir_fd_for(parts))
                self.dirs[parts] = (mode | 0o700, float(member.mtime))
            else:
                self.root_mode = mode | 0o700
            return
        if not parts:
            raise InvalidArchive(f"{self.shown}: member {member.name!r} has no name")
        if member.issparse() or not (member.isreg() or member.issym() or member.islnk()):
            raise InvalidArchive(
                f"{self.shown}: member {member.name!r} is not a file, directory or link "
                "(devices, fifos and sparse files are refused)"
            )
        parent = self._dir_fd_for(parts[:-1])
        try:
            self._replaceable(parent, parts)
            if member.isreg():
                self._file(archive, member, parent, parts[-1], mode)
                self.files.add(parts)
            elif member.issym():
                self._symlink(member, parent, parts)
            else:
                self._hardlink(member, parent, parts)
        finally:
            os.close(parent)

    def _parts(self, name: str, what: str) -> tuple[str, ...]:
        if "\0" in name:
            raise InvalidArchive(f"{self.shown}: {what} {name!r} has a NUL in its name")
        if name.startswith("/"):
            raise PathOutsideWorkspace(f"{self.shown}: {what} {name!r} is an absolute path")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise PathOutsideWorkspace(f"{self.shown}: {what} {name!r} climbs out with '..'")
        return parts

    def _file(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str, mode: int
    ) -> None:
        self.size += member.size
        if self.size > self.max_bytes:
            raise FileTooLarge(
                f"{self.shown}: the archive's files exceed the limit of {self.max_bytes} bytes"
            )
        source = archive.extractfile(member)
        assert source is not None  # a regular member always has content
        fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as target:
            _copy(source, target)
            target.flush()  # before the mtime, which a later write would change
            os.fchmod(fd, mode)
            os.utime(fd, (member.mtime, member.mtime))

    def _symlink(self, member: tarfile.TarInfo, parent: int, parts: tuple[str, ...]) -> None:
        shown = f"{self.shown}: member {member.name!r}"
        self.workspace.symlink_target_parts(
            member.linkname, (*self.destination, *parts), shown=shown
        )
        os.symlink(member.linkname, parts[-1], dir_fd=parent)
        with contextlib.suppress(OSError):
            os.utime(parts[-1], (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, member: tarfile.TarInfo, parent: int, parts: tuple[str, ...]) -> None:
        source = self._parts(member.linkname, "hard link target")
        if source not in self.files:
            raise PathOutsideWorkspace(
                f"{self.shown}: member {member.name!r} is a hard link to {member.linkname!r}, "
                "which is not a file earlier in this archive"
            )
        source_dir = self._dir_fd_for(source[:-1])
        try:
            os.link(
                source[-1],
                parts[-1],
                src_dir_fd=source_dir,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(source_dir)
        self.files.add(parts)

    def _replaceable(self, parent: int, parts: tuple[str, ...]) -> None:
        """A later member replaces an earlier one of the same name, as tar does; not a
        directory, though."""
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArchive(
                f"{self.shown}: member {'/'.join(parts)!r} would replace a directory"
            )
        os.unlink(parts[-1], dir_fd=parent)
        self.files.discard(parts)

    def _dir_fd_for(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the staged directory ``parts``, made (and its parents) if missing,
        never through a symlink of the archive."""
        try:
            fd = make_dirs_at(self.stage_fd, parts, mode=DEFAULT_DIR_MODE)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise InvalidArchive(
                    f"{self.shown}: {'/'.join(parts)!r} in the archive is below a symlink or a "
                    "file of the archive"
                ) from exc
            raise
        return fd


def _copy(source: IO[bytes], target: IO[bytes]) -> None:
    while chunk := source.read(COPY_CHUNK):
        target.write(chunk)


def _move_into_place(located: Located, stage: str, shown: str) -> None:
    """Rename the staged tree to a missing destination, or merge it into an existing one."""
    if not located.exists:
        parent = make_dirs_at(located.dir_fd, located.rest[:-1])
        try:
            os.rename(stage, located.name, src_dir_fd=located.dir_fd, dst_dir_fd=parent)
        finally:
            os.close(parent)
        return
    source = open_dir_at(located.dir_fd, stage)
    target = open_dir_at(located.dir_fd, located.name)
    try:
        _check_merge(source, target, shown, ())
        _merge(source, target)
    finally:
        os.close(source)
        os.close(target)


def _check_merge(source: int, target: int, shown: str, where: tuple[str, ...]) -> None:
    """Refuse, before anything moves, a member that would replace a directory by a file or
    the reverse (or go through a symlink of the workspace)."""
    with os.scandir(source) as entries:
        for entry in entries:
            try:
                existing = os.stat(entry.name, dir_fd=target, follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = "/".join((*where, entry.name))
            if entry.is_dir(follow_symlinks=False):
                if not stat.S_ISDIR(existing.st_mode):
                    raise PathConflict(
                        f"{shown}: the archive has a directory {path!r} where the workspace "
                        "has something else (a file or a symlink)"
                    )
                child_source = os.open(entry.name, DIR_FLAGS, dir_fd=source)
                try:
                    child_target = os.open(entry.name, DIR_FLAGS, dir_fd=target)
                    try:
                        _check_merge(child_source, child_target, shown, (*where, entry.name))
                    finally:
                        os.close(child_target)
                finally:
                    os.close(child_source)
            elif stat.S_ISDIR(existing.st_mode):
                raise PathConflict(
                    f"{shown}: the archive has a file {path!r} where the workspace has a directory"
                )


def _merge(source: int, target: int) -> None:
    with os.scandir(source) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        if is_dir:
            try:
                child_target = os.open(name, DIR_FLAGS, dir_fd=target)
            except FileNotFoundError:
                os.rename(name, name, src_dir_fd=source, dst_dir_fd=target)
                continue
            child_source = os.open(name, DIR_FLAGS, dir_fd=source)
            try:
                _merge(child_source, child_target)
            finally:
                os.close(child_source)
                os.close(child_target)
        else:
            os.rename(name, name, src_dir_fd=source, dst_dir_fd=target)
