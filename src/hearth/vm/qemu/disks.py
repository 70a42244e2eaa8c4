"""Per-VM disks: qcow2 copy-on-write overlays on read-only golden images (never full copies)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hearth.errors import VmError
from hearth.tools import run_tool
from hearth.vm.host import bytes_on_disk
from hearth.vm.qemu.disk_keys import DiskKey, encrypt_create_options, secret_object
from hearth.vm.qemu.luks import rekey_overlay

_BLOCK = 4096
_PROTOTYPE_ATTEMPTS = 8
_PROTOTYPE_BACKOFF_S = 0.1  # times the attempt number: at most 2.8 s in all (in a thread)
_FLAKY_BENCHMARK = "Unable to get accurate CPU usage"


def create_overlay(
    backing: Path, overlay: Path, *, backing_format: str, key: DiskKey | None = None
) -> int:
    """Create ``overlay`` on top of ``backing`` with qemu-img, LUKS-encrypted under ``key`` when
    given (slow: see luks.py); returns the bytes it occupies on disk. The backing stays plain."""
    encryption: list[str | Path] = []
    if key is not None:
        # The key reaches qemu-img on its stdin, never on its command line.
        encryption = ["--object", secret_object("/dev/stdin"), "-o", encrypt_create_options()]
    run_tool(
        [
            "qemu-img",
            "create",
            "-q",
            *encryption,
            "-f",
            "qcow2",
            "-b",
            backing.resolve(),
            "-F",
            backing_format,
            overlay,
        ],
        what=f"create overlay {overlay.name}",
        error=VmError,
        timeout=60,
        input_bytes=key.passphrase if key is not None else None,
    )
    return bytes_on_disk(overlay)


def create_volume(path: Path, size_mib: int, key: DiskKey) -> None:
    """Create a blank qcow2 volume of ``size_mib`` at ``path`` (0600), LUKS-encrypted under
    ``key``; the guest formats it. VmError when qemu-img fails."""
    encryption = ["--object", secret_object("/dev/stdin"), "-o", encrypt_create_options()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        _retrying_benchmark(
            lambda: run_tool(
                ["qemu-img", "create", "-q", *encryption, "-f", "qcow2", path, f"{size_mib}M"],
                what=f"create volume {path.name}",
                error=VmError,
                timeout=60,
                input_bytes=key.passphrase,
            )
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class Overlays:
    """Creates VMs' overlays; an encrypted one is a re-keyed copy of a prototype per backing.

    The prototype is made by qemu-img under a throwaway key that is dropped at once, so it
    unlocks nothing; it lives in memory only, and the first overlay on a backing pays for it.
    """

    def __init__(self) -> None:
        self._prototypes: dict[tuple[str, str, int, int], bytes] = {}
        self._locks: dict[tuple[str, str, int, int], threading.Lock] = {}
        self._guard = threading.Lock()

    def create(
        self, backing: Path, overlay: Path, *, backing_format: str, key: DiskKey | None
    ) -> int:
        """Create ``overlay`` on ``backing`` (encrypted under ``key`` if given); returns the
        bytes it occupies on disk."""
        if key is None:
            return create_overlay(backing, overlay, backing_format=backing_format)
        prototype = self._prototype(backing, backing_format, scratch=overlay.parent)
        fd = os.open(overlay, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            # Sparse, as qemu-img leaves it: most of the LUKS key-slot area is zeros.
            for start in range(0, len(prototype), _BLOCK):
                block = prototype[start : start + _BLOCK]
                if any(block):
                    out.seek(start)
                    out.write(block)
            out.truncate(len(prototype))
        rekey_overlay(overlay, key.passphrase)
        return bytes_on_disk(overlay)

    def _prototype(self, backing: Path, backing_format: str, *, scratch: Path) -> bytes:
        st = backing.stat()
        ident = (str(backing.resolve()), backing_format, st.st_ino, st.st_mtime_ns)
        with self._guard:
            lock = self._locks.setdefault(ident, threading.Lock())
        with lock:
            found = self._prototypes.get(ident)
            if found is None:
                found = self._prototypes[ident] = _make_prototype(
                    backing, backing_format, scratch / "prototype.qcow2"
                )
            return found


def _make_prototype(backing: Path, backing_format: str, path: Path) -> bytes:
    """An encrypted overlay under a throwaway key, as bytes; its file is removed at once."""
    try:
        _retrying_benchmark(
            lambda: create_overlay(
                backing, path, backing_format=backing_format, key=DiskKey.generate()
            )
        )
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def _retrying_benchmark(make: Callable[[], object]) -> None:
    """Run ``make`` (a qemu-img create of a LUKS image), again when QEMU's key-derivation
    benchmark gave up on a busy host."""
    attempt = 1
    while True:
        try:
            make()
            return
        except VmError as exc:
            # QEMU 7.2 times PBKDF2 by the thread's user CPU time, which sometimes reads 0 ms
            # on a busy host: it then gives up with this message. A retry succeeds.
            if _FLAKY_BENCHMARK not in exc.message or attempt == _PROTOTYPE_ATTEMPTS:
                raise
            # Three quick retries all failed on a loaded CI host: give the load time to pass.
            time.sleep(_PROTOTYPE_BACKOFF_S * attempt)
            attempt += 1
