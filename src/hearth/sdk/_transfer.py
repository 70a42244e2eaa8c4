"""The local side of file transfers, without I/O to the API: what an upload sends (bytes, a file,
a directory packed as a tar as it is read) and what a download's answers are.

A regular file goes up with its length declared, as long as it is when the upload begins (what
it grows by meanwhile is left out); a pipe, a FIFO or a /proc file, whose size says nothing,
goes chunked, read to its end. A directory goes up as a POSIX tar streamed from disk a chunk at
a time, names relative to it, symlinks as links (never followed); one comes down as a tar,
read through ``ChunkReader`` and unpacked by ``_archive.extract_tar``.

What comes down comes from the guest, which user code may have taken over: every download, a
file's or a directory's, to a path, to bytes or streamed, takes at most ``max_bytes``
(``DownloadCap``), counted as it arrives (a Content-Length past the bound refuses it before the
body is read, but one within it is not trusted). A file is written beside its target and put in
its place only when whole (``replacing``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from hearth.sdk._errors import HearthApiError, InvalidArchive, LocalFileChanged

CHUNK_BYTES = 1024 * 1024
BLOCK = 512
FILE_MEDIA_TYPE = "application/octet-stream"
TAR_MEDIA_TYPE = "application/x-tar"
FILE_TYPE_HEADER = "x-hearth-file-type"

# What ``write`` takes: bytes, a binary file object, a local path (file or directory), or
# chunks of bytes.
WriteSource = bytes | bytearray | memoryview | BinaryIO | IO[bytes] | Path | Iterable[bytes]
# Called with the bytes sent (or received) so far.
Progress = Callable[[int], None]
# What one download may bring unless ``max_bytes=…`` says otherwise: twice the default workspace
# (``HEARTH_WORKSPACE_SIZE_MIB``, 8 GiB), whose tar is about as large.
MAX_DOWNLOAD_BYTES = 16 * 1024**3


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory in the VM: ``type`` is ``file``, ``dir``, ``symlink`` or
    ``other``; ``mode`` the permission bits; ``target`` a symlink's."""

    name: str
    type: str
    size: int
    mode: int
    mtime: float
    target: str | None = None

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> FileEntry:
        """An entry from the API's JSON."""
        return cls(
            name=str(body["name"]),
            type=str(body["type"]),
            size=int(body["size"]),
            mode=int(str(body["mode"]), 8),
            mtime=float(body["mtime"]),
            target=body.get("target"),
        )


@dataclass(frozen=True)
class FileWritten:
    """What a write made in the VM: a file (``size``, ``sha256``, ``mode``) or, from a
    directory, a tree (``size`` of its files together, ``entries`` in the tar)."""

    path: str
    type: str
    size: int
    sha256: str | None = None
    mode: int | None = None
    entries: int | None = None

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> FileWritten:
        """The answer of a write."""
        mode = body.get("mode")
        return cls(
            path=str(body["path"]),
            type=str(body["type"]),
            size=int(body["size"]),
            sha256=body.get("sha256"),
            mode=None if mode is None else int(str(mode), 8),
            entries=body.get("entries"),
        )


@dataclass
class Upload:
    """What a write sends: its chunks (or bytes), headers and query."""

    content: bytes | Iterator[bytes]
    headers: dict[str, str]
    params: dict[str, str]
    # Closes what the chunks read from (a file this upload opened).
    close: Callable[[], None]


def _nothing_to_close() -> None:
    """What an upload of bytes, or of the caller's own file, closes when it is done."""


def upload_of(
    path: str, data: WriteSource, *, mode: int | None, progress: Progress | None
) -> Upload:
    """The request that writes ``data`` to ``path`` in the VM (a directory: a tar of it), with
    permission bits ``mode`` (None: a local file's own, else the replaced file's), calling
    ``progress`` with the bytes sent so far."""
    params = {"path": path}
    headers = {"Content-Type": FILE_MEDIA_TYPE}
    close: Callable[[], None] = _nothing_to_close
    chunks: bytes | Iterator[bytes]
    if isinstance(data, str):
        raise TypeError("write() takes bytes, a binary file, a pathlib.Path or chunks, not str")
    if isinstance(data, bytes | bytearray | memoryview):
        chunks = bytes(data)
    elif isinstance(data, Path) and data.is_dir():
        headers["Content-Type"] = TAR_MEDIA_TYPE
        chunks = tar_chunks(data)
    elif isinstance(data, Path):
        handle = data.open("rb")
        chunks, close = file_chunks(handle), handle.close
        st = os.fstat(handle.fileno())
        if stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        # A regular file is sent as long as it is now, its length declared; anything else (a
        # pipe, a FIFO, a /proc file, whose size says nothing) chunked, read to its end.
        if stat.S_ISREG(st.st_mode) and st.st_size > 0:
            headers["Content-Length"] = str(st.st_size)
            chunks = sized_chunks(handle, st.st_size, str(data))
    elif hasattr(data, "read"):
        chunks = file_chunks(data)  # type: ignore[arg-type]
    else:
        chunks = (bytes(chunk) for chunk in data)
    if mode is not None and headers["Content-Type"] == FILE_MEDIA_TYPE:
        params["mode"] = f"{mode & 0o777:04o}"
    if progress is not None:
        chunks = counted(iter([chunks]) if isinstance(chunks, bytes) else chunks, progress)
    return Upload(chunks, headers, params, close)


def file_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """A binary file's bytes, a chunk at a time."""
    while chunk := handle.read(CHUNK_BYTES):
        yield chunk


def sized_chunks(
    handle: IO[bytes], size: int, name: str, *, shrunk: Callable[[int], bytes] | None = None
) -> Iterator[bytes]:
    """The first ``size`` bytes of a file (what it grew by meanwhile is left out), a chunk at a
    time. One that holds fewer: ``shrunk(missing)`` fills the rest (a tar member's padding), or
    LocalFileChanged (a length declared in advance can be neither met nor taken back)."""
    left = size
    while left > 0:
        chunk = handle.read(min(CHUNK_BYTES, left))
        if not chunk:
            if shrunk is None:
                raise LocalFileChanged(name, size, size - left)
            chunk = shrunk(left)
        left -= len(chunk)
        yield chunk


def counted(chunks: Iterator[bytes], progress: Progress) -> Iterator[bytes]:
    """``chunks``, reporting the running total to ``progress``."""
    done = 0
    for chunk in chunks:
        done += len(chunk)
        progress(done)
        yield chunk


def tar_chunks(root: Path) -> Iterator[bytes]:
    """A POSIX tar of everything under ``root`` (names relative to it), read as it is sent."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            yield from _member(base / name, str((base / name).relative_to(root)))
    yield b"\0" * (2 * BLOCK)


def _member(path: Path, name: str) -> Iterator[bytes]:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif not stat.S_ISREG(st.st_mode):
        return  # sockets, fifos and devices stay here
    if not stat.S_ISREG(st.st_mode):
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        return
    with path.open("rb") as handle:
        info.size = os.fstat(handle.fileno()).st_size
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        yield from sized_chunks(handle, info.size, str(path), shrunk=_zeros)
    if info.size % BLOCK:
        yield b"\0" * (BLOCK - info.size % BLOCK)


def _zeros(count: int) -> bytes:
    """What stands in a tar for the bytes a file lost while it was packed (as GNU tar pads)."""
    return b"\0" * count


class ChunkReader:
    """A binary stream (``read``) over an iterator of chunks, for ``tarfile``'s stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); ``b""`` at the end."""
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[IO[bytes]]:
    """A new file beside ``target`` to write, renamed to ``target`` when the block ends well and
    removed when it does not: nothing half-written is left, and what was at ``target`` stays."""
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with partial.open("xb") as handle:
            yield handle
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@dataclass
class DownloadCap:
    """The most one download takes: ``max_bytes`` (None: no bound) as it arrives (``arrive``)
    and, a directory's tar, as it unpacks (``unpack``: each part before it is read). Past it:
    InvalidArchive naming ``target`` (the remote path, or where a download saves it), ``what``
    came (``the file``, ``the download's tar``), the bound and how to raise it."""

    target: str | Path
    max_bytes: int | None
    what: str = "the file"
    arrived: int = 0
    unpacked: int = 0

    def declare(self, length: int) -> None:
        """Refuse a download whose Content-Length is ``length``, already past the bound."""
        self._check(length)

    def arrive(self, chunk: bytes) -> None:
        """Count ``chunk`` as it came, before it is handed on or kept."""
        self.arrived += len(chunk)
        self._check(self.arrived)

    def unpack(self, size: int) -> None:
        """Count ``size`` bytes of a tar, in whole blocks, before they are read."""
        self.unpacked += tarfile.BLOCKSIZE * -(-size // tarfile.BLOCKSIZE)
        self._check(self.unpacked)

    def _check(self, count: int) -> None:
        if self.max_bytes is not None and count > self.max_bytes:
            raise InvalidArchive(
                f"{self.target}: {self.what} is larger than max_bytes ({self.max_bytes} bytes); "
                "nothing was written (a larger max_bytes, or hearth files get --max-bytes N, "
                "raises the bound; None or 0: no bound)"
            )


def answer_kind(status: int, headers: Mapping[str, str], content: bytes | None = None) -> str:
    """``file`` or ``dir``, from a download's answer; HearthApiError for any answer but a
    success (an error, or a redirect: a proxy's or a login page is not the file)."""
    if not 200 <= status < 300:
        raise HearthApiError.of_answer(status, content or b"")
    return headers.get(FILE_TYPE_HEADER, "file")
