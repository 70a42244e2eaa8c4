"""Restore templates prepared before anyone waits for them.

A VM is restored from a snapshot template of its image and size; the first VM of a size whose
template is missing or stale (its image changed: a new build, an agent rollout) would otherwise
boot cold and save the template while its user waits. At start, and again whenever the images
change, ``TemplateWarmer`` builds the templates of the default CLI and Browser VM sizes in the
background, one after the other (``HEARTH_PREPARE_TEMPLATES``, on by default). A create that
comes meanwhile waits for the same build rather than starting another (templates are built once
per key, across processes). ``/health`` shows each one's state. Users' workspace volumes are
prepared first (see ``Workspaces.prepare``).
"""

from __future__ import annotations

import asyncio
import contextlib

from hearth.control.vms import VmService
from hearth.errors import HearthError, ImageNotBuilt
from hearth.logging import get_logger
from hearth.vm.types import VmType

_log = get_logger("control.templates")


class TemplateWarmer:
    """Builds the default sizes' templates in the background; says how far it got."""

    def __init__(self, *, vms: VmService, enabled: bool = True) -> None:
        self.vms = vms
        first = "pending" if enabled else "off"  # off: each is built when a VM first needs it
        self._state: dict[str, str] = {vm_type.value: first for vm_type in VmType}
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def start(self) -> None:
        """Prepare every VM type's template now, in the background (once more after a run in
        progress, when one is)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._warm())

    def status(self) -> dict[str, str]:
        """Per VM type: ``pending``, ``building``, ``ready``, ``no image: …``, ``failed: …``, or
        ``off`` (not prepared ahead)."""
        return dict(self._state)

    async def wait(self) -> None:
        """Return when the warming in progress (if any) has ended."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop warming (a template being built is abandoned; the next create builds it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _warm(self) -> None:
        await self._prepare_workspaces()
        while True:
            self._again = False
            for vm_type in VmType:
                await self._prepare(vm_type)
            if not self._again:
                return

    async def _prepare_workspaces(self) -> None:
        if self.vms.workspaces is None:
            return
        try:
            await self.vms.workspaces.prepare()
        except HearthError as exc:  # the first workspace then makes it itself
            _log.warning("workspace_prepare_failed", error=exc.message[:300])

    async def _prepare(self, vm_type: VmType) -> None:
        spec = self.vms.spec_for(vm_type, None, None)
        self._state[vm_type.value] = "building"
        try:
            await self.vms.node.prepare(vm_type, spec)
        except ImageNotBuilt as exc:
            self._state[vm_type.value] = f"no image: {exc.message}"
            return
        except HearthError as exc:
            self._state[vm_type.value] = f"failed: {exc.message[:300]}"
            _log.warning("template_prepare_failed", vm_type=vm_type.value, error=exc.message[:300])
            return
        self._state[vm_type.value] = "ready"
        _log.info("template_prepared", vm_type=vm_type.value, size=spec.size_key)
