"""Per-VM disks: qcow2 copy-on-write overlays on read-only golden images (never full copies)."""

from __future__ import annotations

import os
import secrets
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
_PROTOTYPE_ATTEMPTS = 40
_PROTOTYPE_BACKOFF_S = 0.25  # at most, between attempts: under 10 s in all (in a thread)
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


def create_blank(path: Path, size_mib: int, key: DiskKey) -> None:
    """Create a blank qcow2 of ``size_mib`` at ``path``, LUKS-encrypted under ``key`` (slow:
    see luks.py). VmError when qemu-img fails."""
    encryption = ["--object", secret_object("/dev/stdin"), "-o", encrypt_create_options()]
    run_tool(
        ["qemu-img", "create", "-q", *encryption, "-f", "qcow2", path, f"{size_mib}M"],
        what=f"create volume {path.name}",
        error=VmError,
        timeout=60,
        input_bytes=key.passphrase,
    )


class Overlays:
    """Creates VMs' overlays and users' volumes; an encrypted one is a re-keyed copy of a
    prototype per backing (overlays) or per size (volumes).

    A prototype is made by qemu-img under a throwaway key that is dropped at once, so it
    unlocks nothing; it lives in memory only, and the first disk of its kind pays for it. An
    overlay prototype (≈ 2.3 MB) is kept while its backing file is there and the same: each
    rollout replaces the image and each template rebuild prunes the older template, so the
    next ``prepare`` forgets the prototypes of those (nothing can be layered on them any more;
    a create already holding one keeps its bytes).
    """

    def __init__(self) -> None:
        self._prototypes: dict[tuple[object, ...], bytes] = {}
        self._locks: dict[tuple[object, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def made(self) -> list[str]:
        """The kinds of the prototypes kept now (``overlay``, ``volume``), one per each."""
        with self._guard:
            return [str(ident[0]) for ident in self._prototypes]

    def create(
        self, backing: Path, overlay: Path, *, backing_format: str, key: DiskKey | None
    ) -> int:
        """Create ``overlay`` on ``backing`` (encrypted under ``key`` if given); returns the
        bytes it occupies on disk."""
        if key is None:
            return create_overlay(backing, overlay, backing_format=backing_format)
        _write_rekeyed(self.prepare(backing, backing_format, overlay.parent), overlay, key)
        return bytes_on_disk(overlay)

    def prepare(self, backing: Path, backing_format: str, scratch: Path) -> bytes:
        """The prototype of overlays on ``backing``, made (in ``scratch``) if there is none."""
        st = backing.stat()
        ident = ("overlay", str(backing.resolve()), backing_format, st.st_ino, st.st_mtime_ns)
        self._forget_stale_overlays()
        return self._prototype(
            ident,
            lambda path: create_overlay(
                backing, path, backing_format=backing_format, key=DiskKey.generate()
            ),
            scratch=scratch,
        )

    def create_volume(self, path: Path, size_mib: int, key: DiskKey) -> None:
        """Create a blank volume of ``size_mib`` at ``path`` (0600), encrypted under ``key``;
        the guest formats it."""
        _write_rekeyed(self.prepare_volume(path.parent, size_mib), path, key)

    def prepare_volume(self, scratch: Path, size_mib: int) -> bytes:
        """The prototype of ``size_mib`` volumes, made (in ``scratch``) if there is none yet."""
        return self._prototype(
            ("volume", size_mib),
            lambda path: create_blank(path, size_mib, DiskKey.generate()),
            scratch=scratch,
        )

    def _forget_stale_overlays(self) -> None:
        """Drop the overlay prototypes whose backing file is gone or was replaced since."""
        with self._guard:
            overlays = [ident for ident in self._prototypes if ident[0] == "overlay"]
        stale = [ident for ident in overlays if not _same_file(ident)]
        with self._guard:
            for ident in stale:
                self._prototypes.pop(ident, None)
                self._locks.pop(ident, None)

    def _prototype(
        self, ident: tuple[object, ...], make: Callable[[Path], object], *, scratch: Path
    ) -> bytes:
        with self._guard:
            lock = self._locks.setdefault(ident, threading.Lock())
        with lock:
            with self._guard:
                found = self._prototypes.get(ident)
            if found is None:
                # A name of its own: prototypes of other kinds may be made beside it at once.
                path = scratch / f".prototype-{secrets.token_hex(6)}.qcow2"
                found = _make_prototype(make, path)
                with self._guard:
                    self._prototypes[ident] = found
            return found


def _same_file(ident: tuple[object, ...]) -> bool:
    """Whether the backing an overlay prototype's ``ident`` names is still that very file."""
    _, path, _, inode, mtime_ns = ident
    try:
        st = os.stat(str(path))
    except OSError:
        return False
    return (st.st_ino, st.st_mtime_ns) == (inode, mtime_ns)


def _write_rekeyed(prototype: bytes, path: Path, key: DiskKey) -> None:
    """Write a copy of ``prototype`` at ``path`` (0600, new) under a master key of its own,
    unlocked by ``key``; nothing is left at ``path`` if that fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            # Sparse, as qemu-img leaves it: most of the LUKS key-slot area is zeros.
            for start in range(0, len(prototype), _BLOCK):
                block = prototype[start : start + _BLOCK]
                if any(block):
                    out.seek(start)
                    out.write(block)
            out.truncate(len(prototype))
        rekey_overlay(path, key.passphrase)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _make_prototype(make: Callable[[Path], object], path: Path) -> bytes:
    """An encrypted image made by ``make`` at ``path``, as bytes; the file is removed at once."""
    try:
        _retrying_benchmark(lambda: make(path))
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
            # QEMU 7.2 times 32768 PBKDF2 rounds by the thread's CPU time and gives up with this
            # message when that reads 0 ms: a few ms of work on a host whose CPU clock ticks
            # coarsely, or a busy one. Eight attempts in a row failed once on a CI host, so
            # retry many times: a failed attempt costs milliseconds.
            if _FLAKY_BENCHMARK not in exc.message or attempt == _PROTOTYPE_ATTEMPTS:
                raise
            time.sleep(min(_PROTOTYPE_BACKOFF_S, 0.02 * attempt))
            attempt += 1
