"""Credential files on disk: atomic writes, owner-only modes, one lock per provider.

Every document and side file is reached from a descriptor of its directory and never through a
symlink at its own name or at the credential directory's: what sits there is refused, not
followed, as is anything but a regular file (a FIFO would block the reader, holding the
provider's lock) and a file above its cap (a read must end).

A document that ``replace`` could not write (disk full, EIO) is held in memory, served by
``read`` in place of the file it was to replace, until ``save_held`` writes it: an ``oidc``
refresh rotates the refresh token, so those bytes may be the grant's only live copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hearth_agent.errors import StorageError
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.log import JsonLogger
from hearth_agent.providers import PROVIDERS, CredentialFormat, SideFile, merge_side_document
from hearth_agent.workspace import DIR_FLAGS

FILE_MODE = 0o600
DIR_MODE = 0o700
# The agent's request-body cap (server.MAX_BODY_BYTES; not imported: the server imports the app,
# which imports this module). No delivery can store a larger document, so a larger file was not
# put there by the agent and is refused rather than read.
MAX_DOCUMENT_BYTES = 1024 * 1024
# A vendor CLI's own config grows with use (claude keeps per-project state in ~/.claude.json),
# so the side files the agent merges into may be larger than a document, but not without bound.
MAX_SIDE_FILE_BYTES = 16 * MAX_DOCUMENT_BYTES
# Non-blocking: a FIFO opens at once, with or without a writer, and is then refused by fstat.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class WriteResult:
    """What was stored for a provider: digest and size of the primary file's bytes."""

    provider: str
    sha256: str
    size: int
    display_path: str


@dataclass(frozen=True)
class StoredFile:
    """A primary credential file as read back from disk."""

    provider: str
    content: bytes
    sha256: str
    mtime: float
    mode: int  # permission bits, e.g. 0o600
    saved: bool = True  # False: held in memory, not yet on disk (see ``CredentialStore.replace``)


@dataclass(frozen=True)
class _Held:
    """A document ``replace`` could not write, in place of the file whose digest is ``over``."""

    over: str
    data: bytes
    at: float  # when it was held: its ``mtime`` until written


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry so a rename inside it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    The temporary file lives in the same directory (rename is atomic only within a filesystem),
    is flushed and fsynced before the rename, and is removed if anything fails.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def open_private_dir(home: Path, relative_dir: str, *, create: bool = False) -> int:
    """A descriptor of the credential directory ``home/relative_dir`` (home itself for ``.``).

    Home and the existing directories on the way are taken as they are, symlinks included (a
    dotfiles manager may link ``~/.config``). The credential directory itself (the last
    component) is opened with ``O_NOFOLLOW``: a symlink there is refused (ELOOP), so nothing is
    stored, removed or chmod-ed wherever it points. With ``create``, missing directories are
    made 0700 and the credential directory is tightened to 0700, both through their descriptors;
    home is never chmod-ed. FileNotFoundError (without ``create``) when a directory is missing.
    """
    if create and not home.exists():
        home.mkdir(mode=DIR_MODE, parents=True)
    parts = Path(relative_dir).parts
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            made = False
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                    made = True
            child = _open_dir_at(fd, part, nofollow=made or last)
            os.close(fd)
            fd = child
            if made or (create and last):
                os.fchmod(fd, DIR_MODE)  # mkdir's mode is filtered by the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir_at(dir_fd: int, name: str, *, nofollow: bool) -> int:
    flags = DIR_FLAGS if nofollow else DIR_FLAGS & ~os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        # O_NOFOLLOW with O_DIRECTORY fails on a symlink with ENOTDIR, not ELOOP.
        if nofollow and exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(dir_fd, name):
            raise OSError(
                errno.ELOOP, "its directory is a symlink, which the agent does not follow"
            ) from exc
        raise


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def ensure_private_dirs(home: Path, relative_dir: str) -> Path:
    """Create ``home/relative_dir`` with mode 0700 where missing and return it.

    Directories that already exist are left alone, except the credential directory itself (the
    last component), which is tightened to 0700 and must not be a symlink (OSError, ELOOP; see
    ``open_private_dir``). Home is never chmod-ed.
    """
    os.close(open_private_dir(home, relative_dir, create=True))
    return home.joinpath(*Path(relative_dir).parts)


def open_regular_file(name: str, *, dir_fd: int) -> int:
    """A read-only descriptor of the regular file ``name`` in ``dir_fd``.

    A symlink there is not followed and anything but a regular file (a FIFO, a device, a
    directory) is refused, both with an OSError whose strerror says so; FileNotFoundError when
    nothing is there.
    """
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symlink, which the agent does not follow") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def read_small_file(path: Path, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The regular file at ``path`` (its final component not followed), at most ``limit`` bytes;
    OSError otherwise (FileNotFoundError when nothing is there), never a wait on a FIFO."""
    dir_fd = os.open(path.parent, DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        fd = open_regular_file(path.name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        return read_at_most(fd, limit)
    finally:
        os.close(fd)


def read_at_most(fd: int, limit: int) -> bytes:
    """All of the file behind ``fd``; OSError (EFBIG) if it holds more than ``limit`` bytes."""
    too_large = OSError(errno.EFBIG, f"larger than the cap of {limit} bytes")
    if os.fstat(fd).st_size > limit:
        raise too_large
    data = bytearray()
    # One byte past the cap tells a file that grew while being read from one that fits.
    while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
        data += chunk
    if len(data) > limit:
        raise too_large
    return bytes(data)


class CredentialStore:
    """Stores each provider's documents under one home directory; thread-safe per provider.

    A write to one provider holds that provider's lock for the primary file and its side files,
    so concurrent writers leave exactly one of their complete documents behind.
    """

    def __init__(self, *, home: Path, logger: JsonLogger, workspace: Path | None = None) -> None:
        self._home = home
        self._workspace = workspace if workspace is not None else home / "workspace"
        self._logger = logger
        self._locks = {name: threading.Lock() for name in PROVIDERS}
        # Written only with the provider's lock held; read without it (one dict lookup).
        self._held: dict[str, _Held] = {}

    @property
    def home(self) -> Path:
        """The directory every credential path is relative to."""
        return self._home

    @property
    def workspace(self) -> Path:
        """The directory commands run in, which side files may name (default: HOME/workspace)."""
        return self._workspace

    def path_of(self, provider: CredentialFormat) -> Path:
        """Absolute path of a provider's primary file."""
        return self._home / provider.path

    def write(self, provider: CredentialFormat, data: bytes) -> WriteResult:
        """Store ``data`` byte-for-byte as the primary file, then merge the side files; a
        document held for the provider is dropped (a delivery wins)."""
        with self._locks[provider.name]:
            result = self._write_locked(provider, data)
            self._held.pop(provider.name, None)
            return result

    def replace(
        self, provider: CredentialFormat, data: bytes, *, sha256: str
    ) -> WriteResult | None:
        """``write`` only if the document ``read`` gives is still the one whose digest is
        ``sha256``; None (nothing written) if it changed or went away meanwhile (a delivery won).

        If the write fails (StorageError), ``data`` is held: ``read`` gives it in place of the
        file (``saved`` False) for as long as the file is unchanged, and ``save_held`` (or the
        next ``replace``) writes it.
        """
        with self._locks[provider.name]:
            on_disk = self._read_file(provider)
            current = self._with_held(provider, on_disk)
            if on_disk is None or current is None or current.sha256 != sha256:
                return None
            try:
                result = self._write_locked(provider, data)
            except StorageError:
                self._held[provider.name] = _Held(over=on_disk.sha256, data=data, at=time.time())
                raise
            self._held.pop(provider.name, None)
            return result

    def save_held(self, provider: CredentialFormat) -> WriteResult | None:
        """Write the document ``replace`` could not, if the file is still the one it replaces;
        None if none is held or the file changed meanwhile (the held one is then dropped).
        StorageError if the write fails again (it stays held)."""
        with self._locks[provider.name]:
            held = self._held.get(provider.name)
            if held is None:
                return None
            on_disk = self._read_file(provider)
            if on_disk is None or on_disk.sha256 != held.over:
                del self._held[provider.name]
                return None
            result = self._write_locked(provider, held.data)
            del self._held[provider.name]
            return result

    def _write_locked(self, provider: CredentialFormat, data: bytes) -> WriteResult:
        """``write`` with the provider's lock held."""
        target = self.path_of(provider)
        try:
            ensure_private_dirs(self._home, str(Path(provider.path).parent))
            atomic_write(target, data)
        except OSError as exc:
            raise self._failure(provider, provider.display_path, "write", exc) from exc
        for side_file in provider.side_files:
            try:
                self._merge_side_file(side_file)
            except OSError as exc:
                raise self._failure(provider, f"~/{side_file.path}", "merge", exc) from exc
        return WriteResult(
            provider=provider.name,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            display_path=provider.display_path,
        )

    def read(self, provider: CredentialFormat) -> StoredFile | None:
        """Read the primary file, or return None if it (or its directory) does not exist; the
        document held in its place instead while there is one (see ``replace``).

        StorageError for a symlink, a non-regular file or one above ``MAX_DOCUMENT_BYTES``.
        """
        return self._with_held(provider, self._read_file(provider))

    def _with_held(
        self, provider: CredentialFormat, on_disk: StoredFile | None
    ) -> StoredFile | None:
        """``on_disk``, or the document held in its place if it is the file that one replaces."""
        held = self._held.get(provider.name)  # without the lock: a stale answer is a past one
        if held is None or on_disk is None or on_disk.sha256 != held.over:
            return on_disk
        return StoredFile(
            provider=provider.name,
            content=held.data,
            sha256=hashlib.sha256(held.data).hexdigest(),
            mtime=held.at,
            mode=FILE_MODE,
            saved=False,
        )

    def _read_file(self, provider: CredentialFormat) -> StoredFile | None:
        """The primary file as it is on disk (``read`` without a held document)."""
        try:
            with self._directory_of(provider.path) as (dir_fd, name):
                fd = open_regular_file(name, dir_fd=dir_fd)
                try:
                    content = read_at_most(fd, MAX_DOCUMENT_BYTES)
                    status = os.fstat(fd)
                finally:
                    os.close(fd)
            mtime, mode = status.st_mtime, stat.S_IMODE(status.st_mode)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failure(provider, provider.display_path, "read", exc) from exc
        return StoredFile(
            provider=provider.name,
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            mtime=mtime,
            mode=mode,
        )

    def delete(self, provider: CredentialFormat) -> bool:
        """Remove the primary file (side files stay); return whether there was one. A symlink
        there is removed itself; a symlinked credential directory is refused (StorageError)."""
        with self._locks[provider.name]:
            try:
                with self._directory_of(provider.path) as (dir_fd, name):
                    os.unlink(name, dir_fd=dir_fd)
                    with contextlib.suppress(OSError):
                        os.fsync(dir_fd)
            except FileNotFoundError:
                self._held.pop(provider.name, None)
                return False
            except OSError as exc:
                raise self._failure(provider, provider.display_path, "delete", exc) from exc
            self._held.pop(provider.name, None)
        return True

    @contextlib.contextmanager
    def _directory_of(
        self, relative_path: str, *, create: bool = False
    ) -> Iterator[tuple[int, str]]:
        """A descriptor of the credential directory of ``relative_path`` (see
        ``open_private_dir``) and the file's name in it; closed when the block ends."""
        where = Path(relative_path)
        dir_fd = open_private_dir(self._home, str(where.parent), create=create)
        try:
            yield dir_fd, where.name
        finally:
            os.close(dir_fd)

    def _merge_side_file(self, side_file: SideFile) -> None:
        with self._directory_of(side_file.path, create=True) as (dir_fd, name):
            try:
                fd: int | None = open_regular_file(name, dir_fd=dir_fd)
            except FileNotFoundError:
                fd = None
            try:
                raw = None if fd is None else read_at_most(fd, MAX_SIDE_FILE_BYTES)
                existing = self._decode_side_file(side_file, raw)
                merged = merge_side_document(
                    existing, side_file.sets, workspace=str(self._workspace)
                )
                if fd is not None and merged == existing:
                    os.fchmod(fd, FILE_MODE)
                    return
            finally:
                if fd is not None:
                    os.close(fd)
        text = json.dumps(merged, indent=2, ensure_ascii=False) + "\n"
        atomic_write(self._home / side_file.path, text.encode("utf-8"))

    def _decode_side_file(self, side_file: SideFile, raw: bytes | None) -> object:
        """The side file's JSON (None when it is missing or not JSON: it is then replaced)."""
        if raw is None:
            return None
        try:
            existing = decode_json(raw)
        except JsonTextError as exc:
            self._logger.warning(
                "side_file_replaced", path=f"~/{side_file.path}", reason=f"not valid JSON: {exc}"
            )
            return None
        if existing is not None and not isinstance(existing, dict):
            self._logger.warning(
                "side_file_replaced", path=f"~/{side_file.path}", reason="not a JSON object"
            )
        return existing

    def _failure(
        self, provider: CredentialFormat, shown: str, action: str, exc: OSError
    ) -> StorageError:
        self._logger.error(
            "storage_failed",
            provider=provider.name,
            action=action,
            path=shown,
            errno=exc.errno,
            reason=exc.strerror,
        )
        return StorageError.from_os_error(
            f"could not {action} credentials for provider '{provider.name}': {shown}", exc
        )
