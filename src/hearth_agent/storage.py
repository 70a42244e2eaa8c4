"""Credential files on disk: atomic writes, owner-only modes, one lock per provider."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hearth_agent.errors import StorageError
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.log import JsonLogger
from hearth_agent.providers import PROVIDERS, CredentialFormat, SideFile, merge_side_document

FILE_MODE = 0o600
DIR_MODE = 0o700


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


def ensure_private_dirs(home: Path, relative_dir: str) -> Path:
    """Create ``home/relative_dir`` with mode 0700 where missing and return it.

    Directories that already exist are left alone, except the credential directory itself (the
    last component), which is tightened to 0700. Home is never chmod-ed.
    """
    if not home.exists():
        home.mkdir(mode=DIR_MODE, parents=True)
    current = home
    parts = Path(relative_dir).parts
    for part in parts:
        current = current / part
        try:
            current.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(current, DIR_MODE)  # mkdir's mode is filtered by the umask
    if parts:
        os.chmod(current, DIR_MODE)
    return current


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
        """Store ``data`` byte-for-byte as the primary file, then merge the side files."""
        with self._locks[provider.name]:
            return self._write_locked(provider, data)

    def replace(
        self, provider: CredentialFormat, data: bytes, *, sha256: str
    ) -> WriteResult | None:
        """``write`` only if the primary file is still the one whose digest is ``sha256``; None
        (nothing written) if it changed or went away meanwhile (a delivery won)."""
        with self._locks[provider.name]:
            current = self.read(provider)
            if current is None or current.sha256 != sha256:
                return None
            return self._write_locked(provider, data)

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
        """Read the primary file, or return None if it does not exist."""
        try:
            with open(self.path_of(provider), "rb") as stored:
                content = stored.read()
                status = os.fstat(stored.fileno())
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
        """Remove the primary file (side files stay); return whether there was one."""
        target = self.path_of(provider)
        with self._locks[provider.name]:
            try:
                target.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._failure(provider, provider.display_path, "delete", exc) from exc
            with contextlib.suppress(OSError):
                fsync_directory(target.parent)
        return True

    def _merge_side_file(self, side_file: SideFile) -> None:
        path = self._home / side_file.path
        ensure_private_dirs(self._home, str(Path(side_file.path).parent))
        existing: object = None
        try:
            existing = decode_json(path.read_bytes())
        except FileNotFoundError:
            pass
        except JsonTextError as exc:
            self._logger.warning(
                "side_file_replaced", path=f"~/{side_file.path}", reason=f"not valid JSON: {exc}"
            )
        if existing is not None and not isinstance(existing, dict):
            self._logger.warning(
                "side_file_replaced", path=f"~/{side_file.path}", reason="not a JSON object"
            )
        merged = merge_side_document(existing, side_file.sets, workspace=str(self._workspace))
        if merged == existing:
            os.chmod(path, FILE_MODE)
            return
        text = json.dumps(merged, indent=2, ensure_ascii=False) + "\n"
        atomic_write(path, text.encode("utf-8"))

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
        return StorageError(f"could not {action} credentials for provider '{provider.name}'")
