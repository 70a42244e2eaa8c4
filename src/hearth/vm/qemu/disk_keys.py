"""Per-VM disk keys: a fresh LUKS passphrase per overlay, handed to QEMU over a pipe, stored sealed.

Every VM's own qcow2 overlay is LUKS-encrypted under a key made for that VM alone. QEMU reads it
through a ``secret`` object whose file is an inherited pipe (``/dev/fd/N``): it never touches the
host's disk (not even the tmpfs runtime dir) and never appears on a command line
(``/proc/PID/cmdline`` is world-readable); qemu-img, which only ever sees the throwaway key of a
prototype, reads that on its stdin.

A hibernated VM has no QEMU to hold its key, and must open its disk again when it wakes: so the
backend hands the key to the control plane with the VM (``Vm.disk_key``), which keeps it only
sealed by the vault in the VM's row (``hearth.control.vm_keys``), never in the state dir, and
drops it when the VM ends. The overlay then opens only with the store *and* the master key, as a
delivered credential does (by default both live in the state dir: a master key given in the
environment keeps a copy of that dir from opening anything). Templates stay plain:
they are saved unclaimed, before any user's token or credential reaches them, and every restore
must open them again.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hearth.vm.qemu.options import option_value

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
    return f"secret,id={KEY_OBJECT_ID},format=raw,file={option_value(path)}"


def encrypt_create_options() -> str:
    """``qemu-img create -o`` options for a LUKS-encrypted qcow2 under the key secret."""
    return (
        f"encrypt.format=luks,encrypt.key-secret={KEY_OBJECT_ID},"
        f"encrypt.iter-time={LUKS_ITER_TIME_MS}"
    )


def drive_key_option() -> str:
    """The ``-drive`` option that opens an encrypted qcow2 with the key secret."""
    return f"encrypt.key-secret={KEY_OBJECT_ID}"
