"""A saved machine state coming into a QEMU started with ``-incoming``: wait for it, then run.

A template's clone streams its state from the template's file; a woken VM from its own
encrypted state (``hibernation.load``). Either way QEMU sits in ``inmigrate`` until the stream
is in, then the VM is continued (a woken VM's consumed state is dropped first, ``then``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from hearth.errors import HearthError, SnapshotError, VmProcessExited
from hearth.tools import tail_of_file
from hearth.vm.qemu.command import VmPaths
from hearth.vm.qemu.monitor import Monitor
from hearth.vm.readiness import Deadline
from hearth.vm.types import Vm


async def finish_restore(
    vm: Vm, paths: VmPaths, proc: asyncio.subprocess.Process, *, deadline_s: float
) -> None:
    """Wait for a template's incoming state, then run the VM; a failure here blames the
    template, unless QEMU could not even set up its port forwards (a port clash, not the
    template)."""
    try:
        await run_incoming(vm, paths, proc, deadline_s=deadline_s)
    except SnapshotError:
        raise
    except HearthError as exc:
        stderr = ""
        with contextlib.suppress(OSError):
            stderr = tail_of_file(paths.stderr, 5)
        if "forwarding" in stderr:
            raise VmProcessExited(f"VM {vm.id}: QEMU could not forward: {stderr}") from exc
        raise SnapshotError(f"VM {vm.id}: restore failed: {exc.message} {stderr}") from exc


async def run_incoming(
    vm: Vm,
    paths: VmPaths,
    proc: asyncio.subprocess.Process,
    *,
    deadline_s: float,
    then: Callable[[], object] = lambda: None,
) -> None:
    """Wait until QEMU has the whole incoming state, call ``then``, continue the VM."""
    monitor = await Monitor.connect(vm.id, paths.qmp, deadline=Deadline.after(10))
    try:
        deadline = Deadline.after(deadline_s)
        while (status := await monitor.status()) == "inmigrate":
            if proc.returncode is not None or deadline.expired:
                break
            await asyncio.sleep(0.01)
        if proc.returncode is not None:
            raise VmProcessExited(
                f"VM {vm.id} exited with status {proc.returncode} while restoring: "
                f"{tail_of_file(paths.stderr, 5)}"
            )
        if status == "inmigrate":
            raise SnapshotError(f"VM {vm.id}: restore did not finish in time")
        then()
        await monitor.execute("cont")
    finally:
        await monitor.close()
