"""Boots: the VM boots under way, each of which a destroy stops before its VMM is up.

A destroy of a VM still booting must not free its place in the limits while its VMM boots on
(up to the boot deadline, a Browser VM's ≈ 44 s under TCG): a loop of create and delete would
start VMMs past every limit. So the teardown stops the boot first (``stop``) and waits for it
to end, while the row still counts: the node's create, if under way, is cancelled (the backend
ends what it started, its VMM included, before the cancel goes on); a boot whose VMM is already
up finishes (its workspace attached, its row ready) and the teardown then ends it as it ends any
ready VM. Only the node's create is cancelled, never the rest of the boot: a cancel landing in a
store write or a workspace attach would leave either half done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from hearth.store import VmRecord
from hearth.vm.types import Vm

# The error on the row of a VM destroyed before its boot was over.
STOPPED_BOOT = "destroyed while booting"


class BootStopped(Exception):
    """A destroy stopped the boot before its VMM was up; nothing of the VMM is left."""


class Boots:
    """The boot task of each VM booting, and the node's create within it that ``stop``
    cancels."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[VmRecord]] = {}
        self._vmms: dict[str, asyncio.Task[Vm]] = {}
        self._stopped: set[str] = set()

    def add(self, vm_id: str, task: asyncio.Task[VmRecord]) -> None:
        """Track ``task``, the boot of VM ``vm_id``, until it ends."""
        self._tasks[vm_id] = task

        def ended(_task: asyncio.Task[VmRecord]) -> None:
            self._tasks.pop(vm_id, None)
            self._stopped.discard(vm_id)

        task.add_done_callback(ended)

    def get(self, vm_id: str) -> asyncio.Task[VmRecord] | None:
        """The boot task of VM ``vm_id``, while it runs."""
        return self._tasks.get(vm_id)

    async def vmm(self, vm_id: str, create: Coroutine[Any, Any, Vm]) -> Vm:
        """Run ``create`` (the node's create of VM ``vm_id``) in a task of its own that ``stop``
        may cancel; BootStopped when it did (or had been asked to before the create began)."""
        if vm_id in self._stopped:
            create.close()
            raise BootStopped(vm_id)
        task = asyncio.create_task(create)
        self._vmms[vm_id] = task
        try:
            return await task
        except asyncio.CancelledError:
            # The boot's own cancel (a shutdown) goes on; the create's alone was a stop.
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise BootStopped(vm_id) from None
            raise
        finally:
            self._vmms.pop(vm_id, None)

    async def stop(self, vm_id: str) -> None:
        """Stop VM ``vm_id``'s boot, if one runs: its node's create cancelled unless its VMM is
        already up; returns once the boot has ended, whatever its outcome."""
        task = self._tasks.get(vm_id)
        if task is None or task is asyncio.current_task():
            return
        self._stopped.add(vm_id)
        vmm = self._vmms.get(vm_id)
        if vmm is not None:
            vmm.cancel()  # a create that has just returned its VM keeps it: the boot goes on
        await asyncio.wait([task])
