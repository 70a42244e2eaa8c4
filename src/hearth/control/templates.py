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
from dataclasses import dataclass
from enum import StrEnum

from hearth.control.vms import VmService
from hearth.errors import HearthError, ImageNotBuilt
from hearth.logging import get_logger
from hearth.vm.types import VmType

_log = get_logger("control.templates")


class TemplateState(StrEnum):
    """How far one VM type's default-size template got (``/health`` shows it without a key)."""

    PENDING = "pending"  # waiting for its turn in the warm-up
    BUILDING = "building"  # being built now
    READY = "ready"  # built (or found built): VMs of the type restore from it
    NO_IMAGE = "no image"  # no image serves the VM type, so there is nothing to build from
    FAILED = "failed"  # the build failed; the next VM of the type tries again
    OFF = "off"  # not prepared ahead: each is built when a VM first needs it


@dataclass(frozen=True, slots=True)
class TemplateStatus:
    """One template's state and, for ``no image`` and ``failed``, the error's text."""

    state: TemplateState
    error: str | None = None

    @property
    def text(self) -> str:
        """For the operator: the state, then ``: <error>`` when there is one."""
        return self.state.value if self.error is None else f"{self.state}: {self.error}"


class TemplateWarmer:
    """Builds the default sizes' templates in the background; says how far it got."""

    def __init__(self, *, vms: VmService, enabled: bool = True) -> None:
        self.vms = vms
        first = TemplateStatus(TemplateState.PENDING if enabled else TemplateState.OFF)
        self._state: dict[str, TemplateStatus] = {vm_type.value: first for vm_type in VmType}
        self._task: asyncio.Task[None] | None = None
        self._again = False
        # Bumped by each ``start``: a build begun before it is of images since replaced, so
        # its outcome is not shown (its type stays ``pending`` for the pass that follows).
        self._generation = 0

    def start(self) -> None:
        """Prepare every VM type's template now, in the background (once more after a run in
        progress, when one is). Until its turn, each type with an image is ``pending``: what
        was built before is of the images as they were."""
        self._generation += 1
        for vm_type, status in self._state.items():
            if status.state not in (TemplateState.OFF, TemplateState.NO_IMAGE):
                self._state[vm_type] = TemplateStatus(TemplateState.PENDING)
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._warm())

    def status(self) -> dict[str, TemplateStatus]:
        """Per VM type: its template's state, and the error of one that is ``no image`` or
        ``failed``."""
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
        generation = self._generation
        self._state[vm_type.value] = TemplateStatus(TemplateState.BUILDING)
        try:
            await self.vms.node.prepare(vm_type, spec)
        except ImageNotBuilt as exc:
            outcome = TemplateStatus(TemplateState.NO_IMAGE, exc.message)
        except HearthError as exc:
            outcome = TemplateStatus(TemplateState.FAILED, exc.message[:300])
            _log.warning("template_prepare_failed", vm_type=vm_type.value, error=exc.message[:300])
        else:
            outcome = TemplateStatus(TemplateState.READY)
            _log.info("template_prepared", vm_type=vm_type.value, size=spec.size_key)
        if generation == self._generation:
            self._state[vm_type.value] = outcome
