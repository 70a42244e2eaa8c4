"""The workspace's files: write one atomically, read a file or a directory (a tar) as a stream,
list a directory, remove an entry. Every path goes through ``Workspace.locate``.

A file is written to a temporary file in the deepest directory of its path that exists, synced,
given its mode (the one asked for, else the mode of the file it replaces, else 0644), and only
then are missing parent directories made and the file renamed into place: an upload that fails,
is cut off or passes its cap leaves nothing behind, and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from hearth_agent.archive import COPY_CHUNK, extract_into, tar_stream
from hearth_agent.bodies import RequestBody
from hearth_agent.errors import InvalidInput, PathConflict, StorageError
from hearth_agent.log import JsonLogger
from hearth_agent.staging import STAGING, StagingEntries
from hearth_agent.workspace import Workspace, make_dirs_at, open_dir_at

DEFAULT_FILE_MODE = 0o644
# A listing stops after this many entries (and says it was cut).
MAX_LISTED = 10_000
TAR_CONTENT_TYPE = "application/x-tar"
FILE_CONTENT_TYPE = "application/octet-stream"


def kind_of(mode: int) -> str:
    """``file``, ``dir``, ``symlink`` or ``other`` (a fifo, socket or device)."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def entry_json(name: str, st: os.stat_result, target: str | None) -> dict[str, object]:
    """One listing entry."""
    return {
        "name": name,
        "type": kind_of(st.st_mode),
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "mtime": st.st_mtime,
        "target": target,
    }


class ClosingStream:
    """Chunks read from open descriptors; ``close`` releases them whether or not the chunks
    were read (the server calls it once the response is done)."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """Stop the chunks and release the descriptors; idempotent."""
        close_chunks = getattr(self._chunks, "close", None)
        if close_chunks is not None:
            close_chunks()
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass(frozen=True)
class Download:
    """A file (``kind`` ``file``, its ``size``) or a directory as a tar (``dir``), to stream."""

    kind: str
    size: int | None
    stream: ClosingStream

    @property
    def content_type(self) -> str:
        """The media type of the stream."""
        return TAR_CONTENT_TYPE if self.kind == "dir" else FILE_CONTENT_TYPE


class WorkspaceFiles:
    """The file operations on one workspace."""

    def __init__(
        self, workspace: Workspace, *, logger: JsonLogger, staging: StagingEntries = STAGING
    ) -> None:
        self.workspace = workspace
        self._logger = logger
        self._staging = staging

    def write_file(self, path: str, body: RequestBody, *, mode: int | None) -> dict[str, object]:
        """Write ``body`` to the file at ``path`` atomically (see the module's docstring)."""
        with self.workspace.locate(path, may_be_missing=True) as located:
            shown = self.workspace.display(located.location)
            if located.is_dir:
                raise PathConflict(
                    f"{shown} is a directory: send a tar (Content-Type: {TAR_CONTENT_TYPE}) to "
                    "write into it"
                )
            if located.exists and not located.is_file:
                raise PathConflict(f"{shown} is not a regular file")
            if mode is None:
                old = located.st
                mode = DEFAULT_FILE_MODE if old is None else stat.S_IMODE(old.st_mode) & 0o777
            with self._staging.entry() as temp:
                digest, size = self._write_staged(
                    located.dir_fd, temp, located.rest, body, mode, shown
                )
        self._logger.info("file_written", bytes=size, mode=f"{mode:04o}")
        return {
            "path": shown,
            "type": "file",
            "size": size,
            "sha256": digest,
            "mode": f"{mode:04o}",
        }

    def extract_archive(self, path: str, body: RequestBody, *, max_bytes: int) -> dict[str, object]:
        """Extract the tar ``body`` into the directory at ``path`` (see ``archive``)."""
        with self.workspace.locate(path, may_be_missing=True) as located:
            shown = self.workspace.display(located.location)
            extracted = extract_into(
                self.workspace,
                located,
                body,
                shown=shown,
                max_bytes=max_bytes,
                staging=self._staging,
            )
        self._logger.info("archive_extracted", members=extracted.members, bytes=extracted.size)
        return {"path": shown, "type": "dir", "size": extracted.size, "entries": extracted.members}

    def download(self, path: str) -> Download:
        """The file at ``path``, or the tar of the directory there, opened for streaming."""
        with self.workspace.locate(path) as located:
            shown = self.workspace.display(located.location)
            if located.is_file:
                fd = self._open_at(located.dir_fd, located.name, shown)
                size = os.fstat(fd).st_size
                stream = ClosingStream(_chunks(fd, size), lambda: os.close(fd))
                return Download("file", size, stream)
            if located.is_dir:
                dir_fd = open_dir_at(located.dir_fd, located.name)
                blocks = tar_stream(dir_fd, staging=self._staging)
                stream = ClosingStream(blocks, lambda: os.close(dir_fd))
                return Download("dir", None, stream)
            raise PathConflict(f"{shown} is neither a regular file nor a directory")

    def listing(self, path: str) -> dict[str, object]:
        """The entries of the directory at ``path`` (by name), or the one entry of a file."""
        with self.workspace.locate(path) as located:
            shown = self.workspace.display(located.location)
            assert located.st is not None
            if not located.is_dir:
                entry = entry_json(located.name, located.st, None)
                kind = entry["type"]
                return {"path": shown, "type": kind, "entries": [entry], "truncated": False}
            dir_fd = open_dir_at(located.dir_fd, located.name)
            try:
                entries, truncated = _entries(dir_fd, self._staging)
            finally:
                os.close(dir_fd)
        return {"path": shown, "type": "dir", "entries": entries, "truncated": truncated}

    def remove(self, path: str, *, recursive: bool) -> dict[str, object]:
        """Remove the file, symlink (itself, not its target) or directory at ``path``; a
        directory with anything in it only when ``recursive``."""
        with self.workspace.locate(path, follow_last=False) as located:
            shown = self.workspace.display(located.location)
            assert located.st is not None
            if located.is_root:
                raise InvalidInput("the workspace itself cannot be removed")
            kind = kind_of(located.st.st_mode)
            try:
                if kind != "dir":
                    os.unlink(located.name, dir_fd=located.dir_fd)
                elif recursive:
                    shutil.rmtree(located.name, dir_fd=located.dir_fd)
                else:
                    os.rmdir(located.name, dir_fd=located.dir_fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise PathConflict(
                        f"{shown} is a directory that is not empty: remove it with recursive=true"
                    ) from exc
                raise _storage_error(shown, exc) from exc
        self._logger.info("file_removed", type=kind, recursive=recursive)
        return {"path": shown, "type": kind, "removed": True}

    def _write_staged(
        self,
        dir_fd: int,
        temp: str,
        rest: tuple[str, ...],
        body: RequestBody,
        mode: int,
        shown: str,
    ) -> tuple[str, int]:
        """Write ``body`` to ``temp`` in ``dir_fd``, then rename it to ``rest`` (its missing
        parents made); ``temp`` is removed whatever fails. The sha256 and size written."""
        placed = False
        try:
            self._staging.sweep(dir_fd)
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            with os.fdopen(fd, "wb") as target:
                digest, size = _copy_hashing(body, target)
                os.fchmod(fd, mode)
                target.flush()
                os.fsync(fd)
            parent = make_dirs_at(dir_fd, rest[:-1])
            try:
                os.rename(temp, rest[-1], src_dir_fd=dir_fd, dst_dir_fd=parent)
            finally:
                os.close(parent)
            placed = True
        except OSError as exc:
            raise _storage_error(shown, exc) from exc
        finally:
            if not placed:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
        return digest, size

    def _open_at(self, dir_fd: int, name: str, shown: str) -> int:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise PathConflict(f"{shown} changed while it was opened") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PathConflict(f"{shown} changed while it was opened")
        return fd


def _copy_hashing(body: RequestBody, target: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := body.read(COPY_CHUNK):
        digest.update(chunk)
        target.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _chunks(fd: int, size: int) -> Iterator[bytes]:
    """At most ``size`` bytes of the file (the Content-Length already sent): a file that
    shrinks while being read ends the body short, which the client sees."""
    left = size
    while left > 0:
        chunk = os.read(fd, min(COPY_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _entries(dir_fd: int, staging: StagingEntries) -> tuple[list[dict[str, object]], bool]:
    with os.scandir(dir_fd) as scanned:
        # Uploads in flight stage their temp files here; they are nobody's files yet.
        found = sorted(staging.user_entries(dir_fd, scanned), key=lambda entry: entry.name)
    entries: list[dict[str, object]] = []
    for entry in found[:MAX_LISTED]:
        try:
            st = entry.stat(follow_symlinks=False)
            target = os.readlink(entry.name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
        except FileNotFoundError:
            continue
        entries.append(entry_json(entry.name, st, target))
    return entries, len(found) > MAX_LISTED


def _storage_error(shown: str, exc: OSError) -> StorageError | PathConflict:
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.EEXIST):
        return PathConflict(f"{shown} changed while it was written: {exc.strerror}")
    return StorageError.from_os_error(shown, exc)
