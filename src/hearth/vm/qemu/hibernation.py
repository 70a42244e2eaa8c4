"""Hibernating a QEMU VM: its machine state saved encrypted next to its disk, its layers pinned.

A hibernated VM keeps its work directory: the encrypted disk layer (its key sealed in the VM's
row, as the agent token is), ``state.enc`` (``saved_state``: the migrate stream sealed under a
key of its own), and ``pinned/``, hard links to the kernel, initramfs and every layer under the
VM's own (the template's frozen layer, the golden image). They are made as the VM starts, and
QEMU opens them (``drive_backing``) instead of the paths the overlay's header names: an image
replaced by ``install-agent`` or a rebuild (a new file renamed over the path), or a template
pruned as stale, therefore never changes what a VM runs on, what its hibernation saves it on,
or what it wakes on. Hard links cost nothing. Across filesystems they would be copies: a VM then
starts on the paths as they are, and its hibernation copies what is there (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.errors import SavedStateCorrupt, SnapshotError, VmProcessExited
from hearth.images.manifest import INITRAMFS_NAME, KERNEL_NAME, ImageDir
from hearth.logging import get_logger
from hearth.tools import tail_of_file
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.qemu.options import option_value
from hearth.vm.qemu.saved_state import StateWriter, read_state
from hearth.vm.readiness import Backoff, Deadline
from hearth.vm.saved_files import drop_stale_partial, state_path
from hearth.vm.types import Vm, VmState

if TYPE_CHECKING:  # command.py builds QEMU's -drive options with this module's drive_backing
    from hearth.vm.qemu.command import VmPaths

_log = get_logger("vm.qemu.hibernation")
PINNED_DIR = "pinned"
# QEMU throttles migration to 128 MiB/s by default; a stopped VM saved to local disk need not be.
_UNTHROTTLED = 1 << 40
_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class DiskLayer:
    """One read-only layer under a VM's own disk: its file and format (``qcow2`` or ``raw``)."""

    path: Path
    fmt: str


@dataclass(frozen=True)
class Pinned:
    """What a hibernated VM wakes on: its image's kernel and initramfs, and its disk layers
    (nearest first), all inside its own work directory."""

    image: ImageDir
    layers: tuple[DiskLayer, ...]


def pin(
    workdir: Path, image: ImageDir, layers: tuple[DiskLayer, ...], *, copy: bool = True
) -> Pinned:
    """Hard-link (or, with ``copy``, copy) ``image``'s kernel and initramfs and ``layers`` into
    ``workdir``; files pinned already are kept as they are."""
    target = workdir / PINNED_DIR
    target.mkdir(mode=0o700, exist_ok=True)
    _keep(image.kernel, target / KERNEL_NAME, copy=copy)
    _keep(image.initramfs, target / INITRAMFS_NAME, copy=copy)
    pinned: list[DiskLayer] = []
    for index, layer in enumerate(layers):
        path = target / f"layer-{index}.{layer.fmt}"
        _keep(layer.path, path, copy=copy)
        pinned.append(DiskLayer(path, layer.fmt))
    return Pinned(ImageDir(target), tuple(pinned))


def pin_at_start(workdir: Path, image: ImageDir, layers: tuple[DiskLayer, ...]) -> Pinned | None:
    """``pin`` as a VM starts, by hard links only; None (and nothing pinned) when one of the
    files is on another filesystem, where pinning would copy a whole image."""
    try:
        return pin(workdir, image, layers, copy=False)
    except OSError as exc:
        _log.warning("pin_deferred", workdir=str(workdir), reason=exc.strerror)
        shutil.rmtree(workdir / PINNED_DIR, ignore_errors=True)
        return None


def _keep(source: Path, target: Path, *, copy: bool = True) -> None:
    if target.exists():
        return  # pinned by an earlier hibernation of this VM: the very same file
    try:
        os.link(source, target)
    except OSError as exc:
        if not copy:
            raise
        if not source.is_file():
            raise SnapshotError(f"{source} is gone; the VM cannot be saved on it") from exc
        _log.warning("pin_copies", source=str(source), reason=exc.strerror)
        shutil.copy2(source, target)


def drive_backing(layers: tuple[DiskLayer, ...]) -> str:
    """The ``-drive`` options that open ``layers`` under the VM's own layer, in place of the
    backing files its header names."""
    options: list[str] = []
    prefix = "backing"
    for layer in layers:
        path = option_value(layer.path)
        options += [f"{prefix}.driver={layer.fmt}", f"{prefix}.file.filename={path}"]
        prefix += ".backing"
    return ",".join(options)


async def save(
    monitor: Monitor, *, socket: Path, target: Path, key: bytes, deadline_s: float
) -> int:
    """Migrate the (stopped) VM behind ``monitor`` into ``target``, sealed under ``key``, through
    a unix socket this process listens on; the bytes of state saved. SnapshotError (and no
    file) when that socket cannot be bound, QEMU fails or the deadline passes."""
    socket.unlink(missing_ok=True)
    drop_stale_partial(target, during="hibernate")
    writer = StateWriter(target, key)
    server: asyncio.Server | None = None
    received = asyncio.Event()
    failures: list[BaseException] = []

    async def receive(reader: asyncio.StreamReader, peer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(_READ_BYTES):
                writer.write(chunk)
        except (OSError, ValueError) as exc:
            failures.append(exc)
        finally:
            peer.close()
            received.set()

    try:
        try:  # in the try: a socket that cannot be bound leaves no partial file, no open handle
            server = await asyncio.start_unix_server(receive, path=str(socket))
        except OSError as exc:
            raise SnapshotError(f"cannot listen on {socket}: {exc.strerror or exc}") from exc
        os.chmod(socket, 0o600)
        deadline = Deadline.after(deadline_s)
        await monitor.execute("migrate-set-parameters", {"max-bandwidth": _UNTHROTTLED})
        await monitor.execute("migrate", {"uri": f"unix:{socket}"})
        await monitor.wait_migration(deadline=deadline)
        await asyncio.wait_for(received.wait(), max(deadline.remaining(), 1.0))
        if failures:
            raise SnapshotError(f"writing the saved state failed: {failures[0]}")
        await asyncio.to_thread(writer.finish)
    except BaseException:
        writer.abort()
        raise
    finally:
        if server is not None:
            server.close()
        socket.unlink(missing_ok=True)
    return writer.plain_bytes


async def load(
    paths: VmPaths,
    qemu: asyncio.subprocess.Process,
    source: Path,
    key: bytes,
    *,
    deadline: Deadline,
) -> None:
    """Stream the state sealed in ``source`` into the ``-incoming`` socket of ``qemu``, just
    started on ``paths``; VmProcessExited (with the end of its stderr) as soon as it exits
    before taking the stream, SavedStateCorrupt at the first chunk that does not open (QEMU
    then gives up on the cut stream and exits)."""
    writer = await _connect(paths, qemu, deadline)
    try:
        for chunk in read_state(source, key):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _connect(
    paths: VmPaths, qemu: asyncio.subprocess.Process, deadline: Deadline
) -> asyncio.StreamWriter:
    socket, last = paths.migration, "socket never appeared"
    for delay in Backoff(initial_s=0.01, cap_s=0.2).delays():
        if qemu.returncode is not None:  # it will never listen: say why now, not at the deadline
            raise VmProcessExited(
                f"VM {paths.vm_id} exited with status {qemu.returncode} before its saved state "
                f"came in: {tail_of_file(paths.stderr, 5)}"
            )
        if socket.exists():
            try:
                _reader, writer = await asyncio.open_unix_connection(str(socket))
                return writer
            except OSError as exc:
                last = exc.strerror or type(exc).__name__
        if deadline.expired:
            break
        await asyncio.sleep(min(delay, deadline.remaining()))
    raise SnapshotError(f"QEMU's incoming socket {socket} is not reachable: {last}")


def set_aside(workdir: Path, kept: Path, error: SavedStateCorrupt) -> Path:
    """Move the work dir of a VM whose saved state is unusable into ``kept`` (where no reap
    looks), for inspection; its new place, also named in ``error``'s message. A work dir that
    is gone leaves nothing to keep: ``workdir`` as it was, the message saying so."""
    target = kept / f"{workdir.name}-{int(time.time())}"
    kept.mkdir(mode=0o700, exist_ok=True)
    try:
        workdir.rename(target)
    except FileNotFoundError:
        error.message += f"; its work dir {workdir} is gone"
        return workdir
    error.message += f"; the VM's files are kept in {target}"
    return target


def check_saved(workdir: Path) -> Path:
    """The saved state of the VM in ``workdir``, a stale partial one beside it removed
    (``drop_stale_partial``: a wake runs in the VM's turn, never beside its save);
    SavedStateCorrupt when it is missing (then everything is kept, for inspection)."""
    path = state_path(workdir)
    if not path.is_file():
        raise SavedStateCorrupt(f"the saved state {path} is missing")
    drop_stale_partial(path, during="wake")
    return path


def settle_failed_wake(vm: Vm, kept_dir: Path, exc: BaseException) -> None:
    """Where a VM whose wake failed with ``exc`` (its QEMU ended) stands: failed with its work
    dir moved aside into ``kept_dir`` when its saved state is corrupt; hibernated as it was
    while the state file is there; else failed (it ran from its state, which went with it)."""
    assert vm.workdir is not None
    if isinstance(exc, SavedStateCorrupt):
        vm.workdir = set_aside(vm.workdir, kept_dir, exc)
        vm.state = VmState.FAILED
    elif state_path(vm.workdir).is_file():
        vm.state = VmState.HIBERNATED
    else:
        vm.state = VmState.FAILED
