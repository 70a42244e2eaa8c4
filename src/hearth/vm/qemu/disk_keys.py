"""Per-VM disk keys: a fresh LUKS passphrase per overlay, handed to QEMU over a pipe, never stored.

Every VM's own qcow2 overlay is LUKS-encrypted under a key made for that VM alone. The key
exists in the controller only while the overlay is made (luks.py writes its key slot) and QEMU
started, and afterwards only in that QEMU process's memory: it never touches the host's disk
(not even the tmpfs runtime dir) and never appears on a command line (``/proc/PID/cmdline`` is
world-readable). QEMU reads it through a ``secret`` object whose file is an inherited pipe
(``/dev/fd/N``); qemu-img, which only ever sees the throwaway key of a prototype, reads that on
its stdin. When the VM's QEMU exits its overlay can no longer be read by anyone: the key is
dropped with the VM.

Nothing is sealed by the vault because nothing is persisted: no Hearth path reopens a VM's
disk after its QEMU has exited (pause keeps the process; a VM whose QEMU died is destroyed), and
a vault-sealed key kept in the state dir next to ``master.key`` would let a copy of that state
dir decrypt the overlay again. Templates stay plain: they are saved unclaimed, before any
user's token or credential reaches them, and every restore must open them again.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

KEY_BYTES = 32
KEY_OBJECT_ID = "disk-key"
# The key is 32 random bytes: stretching it buys nothing and every restore would pay for it.
LUKS_ITER_TIME_MS = 10


@dataclass(frozen=True, slots=True, repr=False)
class DiskKey:
    """One VM's disk passphrase: 256 random bits as base64url text (QEMU wants UTF-8 here)."""

    passphrase: bytes

    @classmethod
    def generate(cls) -> DiskKey:
        """A fresh key from the OS's CSPRNG."""
        return cls(base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"="))

    def __repr__(self) -> str:
        return "DiskKey(<redacted>)"


@contextmanager
def key_pipe(key: DiskKey | None) -> Iterator[int | None]:
    """A readable fd holding ``key`` then EOF, for QEMU to inherit (None without a key).

    The pipe is filled and its write end closed before QEMU starts (43 bytes fit any pipe
    buffer), so QEMU reads the key and EOF at once; the parent's read end closes on exit.
    """
    if key is None:
        yield None
        return
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, key.passphrase)
    finally:
        os.close(write_fd)
    try:
        yield read_fd
    finally:
        os.close(read_fd)


def secret_object(path: str) -> str:
    """The QEMU ``secret`` object reading the key from ``path`` (a pipe: never a real file)."""
    return f"secret,id={KEY_OBJECT_ID},format=raw,file={path}"


def encrypt_create_options() -> str:
    """``qemu-img create -o`` options for a LUKS-encrypted qcow2 under the key secret."""
    return (
        f"encrypt.format=luks,encrypt.key-secret={KEY_OBJECT_ID},"
        f"encrypt.iter-time={LUKS_ITER_TIME_MS}"
    )


def drive_key_option() -> str:
    """The ``-drive`` option that opens an encrypted qcow2 with the key secret."""
    return f"encrypt.key-secret={KEY_OBJECT_ID}"
