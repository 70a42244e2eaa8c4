"""Master keys: 32 random bytes, named by a key id, kept base64 in owner-only files.

Layout under the state dir::

    master.key                  the current key (unless HEARTH_MASTER_KEY supplies it)
    master.keys.d/<key id>.key  every key that was current before a rotation, and the new one

Files are written whole to a private temporary file and then linked (exclusive) or renamed
(replace) into place, so a reader never sees a half-written key and two processes creating the
first key agree on one.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path
from typing import NoReturn

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hearth.errors import ConfigError

MASTER_KEY_ENV = "HEARTH_MASTER_KEY"
# The secret API keys are hashed under (HMAC), kept like a master key but never rotated with it:
# rotating it would make every stored key unusable.
KEY_HASH_ENV = "HEARTH_KEY_HASH_SECRET"
KEY_HASH_FILE = "key-hash.key"
_KEY_HASH_LABEL = b"hearth api key hash v1"
MASTER_KEY_FILE = "master.key"
KEYRING_DIR = "master.keys.d"
KEY_FILE_SUFFIX = ".key"
KEY_BYTES = 32  # AES-256
KEY_ID_CHARS = 16
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700
# A key file holds 44 base64 characters and a newline; anything much larger is not one.
MAX_KEY_FILE_BYTES = 1024

_KEY_ID = re.compile(rf"[0-9a-f]{{{KEY_ID_CHARS}}}")
_HOW_TO_MAKE = "e.g. `openssl rand -base64 32`"


def key_id_of(secret: bytes) -> str:
    """The id of a key: the first 16 hex digits of its sha256 (names it without revealing it)."""
    return hashlib.sha256(secret).hexdigest()[:KEY_ID_CHARS]


def is_key_id(text: str) -> bool:
    """Whether ``text`` has the shape of a key id (so it is safe in a file name)."""
    return _KEY_ID.fullmatch(text) is not None


class MasterKey:
    """One AES-256-GCM master key and its id; the key bytes never appear in its repr."""

    __slots__ = ("_secret", "aead", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ConfigError(f"a master key is exactly {KEY_BYTES} bytes, not {len(secret)}")
        self._secret = bytes(secret)
        self.key_id = key_id_of(self._secret)
        self.aead = AESGCM(self._secret)

    @classmethod
    def generate(cls) -> MasterKey:
        """A new key from the operating system's random source."""
        return cls(secrets.token_bytes(KEY_BYTES))

    def derive(self, label: bytes) -> bytes:
        """A 32-byte subkey for one purpose, named by ``label`` (HMAC-SHA256 of it)."""
        return hmac.new(self._secret, label, hashlib.sha256).digest()

    def file_content(self) -> bytes:
        """The key as its file holds it: base64 and a newline (the HEARTH_MASTER_KEY format)."""
        return base64.b64encode(self._secret) + b"\n"

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    def __reduce__(self) -> NoReturn:
        # Pickling would write the key bytes wherever the pickle goes.
        raise TypeError("a MasterKey cannot be pickled")


def decode_master_key(encoded: str | bytes, *, source: str) -> MasterKey:
    """Parse base64 of exactly 32 bytes; ConfigError naming ``source`` (never the value)."""
    try:
        secret = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        # Neither the value nor the decoder's message (which may quote it) goes into the error.
        raise ConfigError(
            f"{source} is not valid base64; it must be the base64 encoding of {KEY_BYTES} "
            f"random bytes ({_HOW_TO_MAKE})"
        ) from None
    if len(secret) != KEY_BYTES:
        raise ConfigError(
            f"{source} decodes to {len(secret)} bytes; a master key is exactly {KEY_BYTES} "
            f"bytes ({_HOW_TO_MAKE})"
        )
    return MasterKey(secret)


def read_key_file(path: Path) -> MasterKey:
    """Read the key in ``path``, refusing anything but a regular file only its owner can use.

    FileNotFoundError passes through (the caller decides whether absence is fine); every other
    problem is a ConfigError that names the path and says how to fix it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"master key file {path} is a symbolic link; it must be a regular file"
            ) from exc
        raise ConfigError(f"cannot read master key file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"master key file {path} is not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ConfigError(
                f"master key file {path} is accessible by group or others (mode {mode:04o}); "
                f"refusing to use it: run `chmod 600 {path}`, and replace the key if others "
                "may have read it"
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read master key file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"master key file {path} is too large to be a key")
    return decode_master_key(data, source=f"master key file {path}")


def _write_private_temp(path: Path, key: MasterKey) -> Path:
    """Write ``key`` into a new owner-only file next to ``path`` and sync it; its path."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, KEY_FILE_MODE
    )
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # exactly 0600, whatever the umask
        content = memoryview(key.file_content())
        while content:
            content = content[os.write(fd, content) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_key_file(path: Path, key: MasterKey) -> bool:
    """Create ``path`` holding ``key`` (mode 0600) unless it exists; return whether it did.

    The link into place is exclusive like ``O_EXCL``, but the file it links is already
    complete: a racing reader or creator sees no file or the whole key, never a partial one.
    """
    try:
        temp = _write_private_temp(path, key)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        _sync_directory(path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot create master key file {path}: {exc.strerror}") from exc
    return True


def replace_key_file(path: Path, key: MasterKey) -> None:
    """Atomically make ``path`` hold ``key`` (mode 0600), replacing what it held."""
    try:
        temp = _write_private_temp(path, key)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _sync_directory(path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write master key file {path}: {exc.strerror}") from exc


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (owner-only) if missing; ConfigError if that fails."""
    try:
        path.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {path}: {exc.strerror}") from exc
    return path


def keyring_path(keyring_dir: Path, key_id: str) -> Path:
    """Where the keyring keeps the key ``key_id``."""
    if not is_key_id(key_id):
        raise ConfigError(f"{key_id[:64]!r} is not a master key id")
    return keyring_dir / f"{key_id}{KEY_FILE_SUFFIX}"


def read_keyring_key(keyring_dir: Path, key_id: str) -> MasterKey | None:
    """The key ``key_id`` from the keyring, None if absent; ConfigError if its file lies."""
    path = keyring_path(keyring_dir, key_id)
    try:
        key = read_key_file(path)
    except FileNotFoundError:
        return None
    if key.key_id != key_id:
        raise ConfigError(
            f"keyring file {path} holds the key with id {key.key_id}, not {key_id}; each "
            f"file must be named <key id>{KEY_FILE_SUFFIX}"
        )
    return key


def read_keyring(keyring_dir: Path) -> list[MasterKey]:
    """Every key in the keyring directory (none if it does not exist), ordered by file name.

    Only ``<key id>.key`` files count; other names (our dot-prefixed temporaries included) are
    ignored.
    """
    try:
        names = sorted(entry.name for entry in keyring_dir.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot list master keyring {keyring_dir}: {exc.strerror}") from exc
    keys = []
    for name in names:
        key_id = name.removesuffix(KEY_FILE_SUFFIX)
        if name.endswith(KEY_FILE_SUFFIX) and is_key_id(key_id):
            key = read_keyring_key(keyring_dir, key_id)
            if key is not None:
                keys.append(key)
    return keys


def archive_key(keyring_dir: Path, key: MasterKey) -> None:
    """Make sure the keyring holds ``key`` (idempotent); ConfigError if its slot holds another."""
    path = keyring_path(ensure_private_dir(keyring_dir), key.key_id)
    if not create_key_file(path, key):
        read_keyring_key(keyring_dir, key.key_id)  # raises unless it holds this very key


def load_or_create_key_file(path: Path) -> tuple[MasterKey, bool]:
    """The key in ``path``, created (0600) if there is none; and whether this call created it.

    Two processes creating it at once agree on one key (the exclusive link decides).
    """
    try:
        return read_key_file(path), False
    except FileNotFoundError:
        pass
    ensure_private_dir(path.parent)
    key = MasterKey.generate()
    if create_key_file(path, key):
        return key, True
    return read_key_file(path), False  # another process created it first: use theirs


def load_key_hash_secret(state_dir: Path, encoded: str | None) -> bytes:
    """The secret API keys are stored under: from ``HEARTH_KEY_HASH_SECRET`` (base64 of 32
    bytes; every controller sharing one database needs the same), else from ``key-hash.key``
    in the state dir, created on first use. Never stored in the database, so a copy of the
    database alone does not allow guessing keys offline."""
    if encoded:
        key = decode_master_key(encoded, source=KEY_HASH_ENV)
    else:
        key, _ = load_or_create_key_file(state_dir / KEY_HASH_FILE)
    return key.derive(_KEY_HASH_LABEL)
