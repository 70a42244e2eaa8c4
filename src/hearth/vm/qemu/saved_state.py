"""A hibernated VM's saved machine state, encrypted at rest: AES-256-GCM chunks, a key of its own.

QEMU's ``migrate`` stream holds the guest's whole memory (the agent's token, the user's delivered
credentials, whatever the CLIs keep in RAM), so it never touches the disk in clear. QEMU writes
the stream to a unix socket the backend listens on; the backend seals it chunk by chunk into
``state.enc`` under a fresh 256-bit key that exists only in memory and, sealed by the vault, in
the VM's row. A wake reads it back the same way into the socket of a QEMU started with
``-incoming``.

File layout: ``MAGIC``, then chunks, each a 4-byte big-endian length and that many bytes of
AES-GCM output (ciphertext and tag). Chunk ``i`` uses the 96-bit nonce ``i`` (the key is used for
this one file only) and authenticates ``MAGIC``, ``i`` and a final-chunk flag; the last chunk is
empty and flagged final. So a chunk altered, dropped, reordered, or a file cut short, is refused
by name, never streamed into a guest as memory.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hearth.errors import SavedStateCorrupt
from hearth.vm.saved_files import partial_path

MAGIC = b"HEARTH-STATE-1\n"
KEY_BYTES = 32
CHUNK_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")
_TAG_BYTES = 16


def new_state_key() -> bytes:
    """A fresh key for one saved state, from the OS's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(index: int, final: bool) -> bytes:
    return MAGIC + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class StateWriter:
    """Seals a stream into ``path`` (via ``path.partial``, renamed by ``finish``)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._partial = partial_path(path)
        self._aead = AESGCM(key)
        self._file: BinaryIO = self._partial.open("wb")
        os.chmod(self._partial, 0o600)
        self._file.write(MAGIC)
        self._buffer = bytearray()
        self._index = 0
        self.plain_bytes = 0

    def write(self, data: bytes) -> None:
        """Add stream bytes; full chunks are sealed and written at once."""
        self._buffer += data
        self.plain_bytes += len(data)
        while len(self._buffer) >= CHUNK_BYTES:
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), final=False)
            del self._buffer[:CHUNK_BYTES]

    def _seal(self, plain: bytes, *, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index), plain, _aad(self._index, final))
        self._file.write(_LENGTH.pack(len(sealed)) + sealed)
        self._index += 1

    def finish(self) -> None:
        """Seal what is buffered and the final marker, flush to disk, rename into place."""
        if self._buffer:
            self._seal(bytes(self._buffer), final=False)
            self._buffer.clear()
        self._seal(b"", final=True)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._partial.rename(self.path)

    def abort(self) -> None:
        """Drop the partial file (a save that failed leaves nothing)."""
        self._file.close()
        self._partial.unlink(missing_ok=True)


def read_state(path: Path, key: bytes) -> Iterator[bytes]:
    """The stream sealed in ``path``, chunk by chunk; SavedStateCorrupt when the file is missing,
    not a saved state, altered, or cut short (raised at the chunk where that shows)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError as exc:
        raise SavedStateCorrupt(f"the saved state {path} is missing") from exc
    aead = AESGCM(key)
    with handle:
        if handle.read(len(MAGIC)) != MAGIC:
            raise SavedStateCorrupt(f"{path} is not a saved state of this format")
        index = 0
        while True:
            header = handle.read(_LENGTH.size)
            if len(header) < _LENGTH.size:
                raise SavedStateCorrupt(f"{path} is cut short: it ends before chunk {index}")
            (length,) = _LENGTH.unpack(header)
            if not _TAG_BYTES <= length <= CHUNK_BYTES + _TAG_BYTES:
                raise SavedStateCorrupt(f"{path}: chunk {index} has an impossible length")
            sealed = handle.read(length)
            if len(sealed) < length:
                raise SavedStateCorrupt(f"{path} is cut short inside chunk {index}")
            plain = _open(aead, path, index, sealed)
            if plain is None:
                if handle.read(1):
                    raise SavedStateCorrupt(f"{path} has data after its final chunk")
                return
            yield plain
            index += 1


def _open(aead: AESGCM, path: Path, index: int, sealed: bytes) -> bytes | None:
    """Chunk ``index`` in clear; None for the final marker."""
    for final in (False, True):
        try:
            plain = aead.decrypt(_nonce(index), sealed, _aad(index, final))
        except InvalidTag:
            continue
        return None if final else plain
    raise SavedStateCorrupt(
        f"{path}: chunk {index} does not authenticate (altered, or sealed under another key)"
    )
