"""What every VMM backend does the same way around its own start and teardown.

Restore from the snapshot template first and fall back to a cold boot (discarding a template
that cannot be restored); claim a pooled VM; watch the VMM process and fail the VM when it dies;
destroy idempotently, every step's error collected; reap whatever no kept VM holds; say what
is still on the host. A backend subclasses ``BackendLifecycle`` and supplies the VMM's own steps:
``_template_for``, ``_start``, ``_teardown``, ``_found_vm``, ``_reap_leftovers`` and
``_host_leftovers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, Unpack

from hearth.errors import (
    HearthError,
    NotSupported,
    SnapshotError,
    VmError,
    VmProcessExited,
    VmStateError,
)
from hearth.images.manifest import ImageDir
from hearth.logging import get_logger
from hearth.vm.accel import Accel
from hearth.vm.backend import CreateOptions
from hearth.vm.claim import claim_vm
from hearth.vm.host import drop_legacy_token, new_vm_id
from hearth.vm.readiness import Deadline, wait_until_healthy
from hearth.vm.templates import SnapshotTemplateStore, TemplateBuilder, TemplateT
from hearth.vm.types import BootMode, Vm, VmSpec, VmState, Volume

_log = get_logger("vm.lifecycle")


def template_is_bad(exc: HearthError) -> bool:
    """Whether a failed restore blames the template (not load, a deadline or a port clash)."""
    if isinstance(exc, SnapshotError):
        return True
    return isinstance(exc, VmProcessExited) and "forwarding" not in exc.message


class BackendLifecycle(ABC, Generic[TemplateT]):
    """The shared half of a ``VmBackend``; subclasses name their VMM and implement its steps."""

    name: str
    vmm_label: str  # how messages name the VMM's process ("QEMU", "firecracker")
    accel: Accel
    can_hibernate = False  # a subclass's own: whether it overrides hibernate (and wake)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Said by what the subclass implements, so the capability cannot drift from it.
        cls.can_hibernate = cls.hibernate is not BackendLifecycle.hibernate

    def __init__(
        self,
        *,
        state_dir: Path,
        templates: SnapshotTemplateStore[TemplateT],
        use_templates: bool,
        cold_deadline_s: float,
        restore_deadline_s: float,
    ) -> None:
        self.vms_dir = state_dir / "vms"
        self.templates = templates
        self.use_templates = use_templates
        self.cold_deadline_s = cold_deadline_s
        self.restore_deadline_s = restore_deadline_s
        self._watchers: dict[str, asyncio.Task[None]] = {}

    # ---- the VmBackend methods every backend shares ----------------------------------------

    async def create(self, image: ImageDir, spec: VmSpec, **options: Unpack[CreateOptions]) -> Vm:
        """Start a VM (restored from a template when possible), healthy and, unless told
        otherwise (warm-pool VMs are claimed when handed out), claimed with its own token."""
        vm_id = self._admit(image, spec, options.get("vm_id") or new_vm_id())
        claim = options.get("claim", True)
        if options.get("boot_mode") is not BootMode.COLD and self.use_templates:
            template: TemplateT | None = None
            try:
                template = await self._template_for(image, spec)
                with self.templates.in_use(template):  # not pruned under a starting restore
                    return await self._start(vm_id, image, spec, template=template, claim=claim)
            except HearthError as exc:
                _log.warning(
                    "restore_failed_cold_boot_instead",
                    vm_id=vm_id,
                    backend=self.name,
                    error=exc.message[:500],
                )
                if template is not None and template_is_bad(exc):
                    # A template that cannot be restored is rebuilt on the next create.
                    self.templates.discard(template)
        return await self._start(vm_id, image, spec, template=None, claim=claim)

    async def claim(self, vm: Vm) -> str:
        """Claim an unclaimed (pooled) VM's agent with a fresh token of its own."""
        return await claim_vm(vm)

    async def prepare(self, image: ImageDir, spec: VmSpec) -> None:
        """Build the template of (image, spec) if there is none yet (templates off: nothing),
        and whatever else its first restore would make (``_warm``)."""
        if self.use_templates:
            await self._warm(await self._template_for(image, spec))

    async def _warm(self, template: TemplateT) -> None:
        """Make now what the first restore from ``template`` in this process would (none)."""

    async def wait_exit(self, vm: Vm) -> None:
        """Return once the VM's watcher has seen its process exit (at once when not watched)."""
        watcher = self._watchers.get(vm.id)
        if watcher is not None:
            await asyncio.shield(watcher)

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        """NotSupported unless the VMM's backend saves VMs to disk (QEMU does)."""
        raise NotSupported(
            f"the {self.name} backend cannot hibernate VMs yet; pause keeps a VM in memory"
        )

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """NotSupported unless the VMM's backend saves VMs to disk (QEMU does)."""
        raise NotSupported(f"the {self.name} backend cannot wake hibernated VMs")

    async def settle_wake(self, vm: Vm) -> VmState:
        """Nothing of a wake to settle where the VMM cannot wake VMs."""
        return VmState.FAILED

    async def create_volume(self, path: Path, size_mib: int, key: bytes) -> None:
        """NotSupported unless the VMM's backend attaches volumes (QEMU does)."""
        raise NotSupported(f"the {self.name} backend cannot attach volumes yet")

    async def prepare_volumes(self, directory: Path, size_mib: int) -> None:
        """Nothing to prepare unless the VMM's backend attaches volumes."""

    async def attach_volume(self, vm: Vm, volume: Volume) -> str | None:
        """NotSupported unless the VMM's backend attaches volumes (QEMU does)."""
        raise NotSupported(f"the {self.name} backend cannot attach volumes yet")

    async def destroy(self, vm: Vm) -> None:
        """Tear the VM down (``_teardown``: every step runs); idempotent. VmError naming the
        steps that failed, once the VM is marked destroyed anyway."""
        if vm.state is VmState.DESTROYED:
            return
        if vm.state is not VmState.STOPPING:
            vm.move_to(VmState.STOPPING)
        errors = await self._teardown(vm)
        watcher = self._watchers.pop(vm.id, None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        vm.move_to(VmState.DESTROYED)
        _log.info("vm_destroyed", vm_id=vm.id, backend=self.name, errors=len(errors))
        if errors:
            raise VmError(f"VM {vm.id} destroyed with errors: {'; '.join(errors)}")

    async def reap(self, keep: set[str]) -> list[str]:
        """Destroy every VM and work dir of this backend not in ``keep``, and every leftover
        (abandoned template builds, sockets, networks) no kept VM holds."""
        reaped: list[str] = []
        if self.vms_dir.is_dir():
            for workdir in sorted(self.vms_dir.iterdir()):
                if not workdir.is_dir():  # scratch a crash left (a disk prototype being made)
                    workdir.unlink(missing_ok=True)
                    reaped.append(workdir.name)
                    continue
                if workdir.name in keep:
                    drop_legacy_token(workdir)  # its token is sealed in the store now
                    continue
                vm = self._found_vm(workdir) or Vm(
                    id=workdir.name, spec=VmSpec(), backend=self.name, workdir=workdir
                )
                vm.state = VmState.FAILED
                await self._destroy_quietly(vm)
                reaped.append(vm.id)
        reaped += await self._reap_leftovers(keep)
        return sorted(set(reaped))

    def leftovers(self) -> list[str]:
        """VM work dirs and abandoned template builds, then the VMM's own processes, sockets
        and network slots (``_host_leftovers``), read from the host; it removes nothing."""
        found: list[str] = []
        if self.vms_dir.is_dir():
            found += [
                f"VM work directory {d} is still there"
                if d.is_dir()
                else f"file {d} is still there"
                for d in sorted(self.vms_dir.iterdir())
            ]
        found += [
            f"template build {staging} was abandoned by its builder"
            for staging in self.templates.abandoned_builds()
        ]
        return found + self._host_leftovers()

    # ---- helpers for the subclasses --------------------------------------------------------

    def _new_vm(self, vm_id: str, spec: VmSpec, workdir: Path, *, template: TemplateT | None) -> Vm:
        """A VM of this backend about to start in ``workdir``: restored when it starts from
        ``template``, cold-booted when there is none."""
        return Vm(
            id=vm_id,
            spec=spec,
            backend=self.name,
            workdir=workdir,
            boot_mode=BootMode.RESTORE if template else BootMode.COLD,
        )

    async def _ensure_template(
        self, key_of: Callable[[], str], *, image: ImageDir, build: TemplateBuilder, spec: VmSpec
    ) -> TemplateT:
        """The template under ``key_of()`` (built by ``build`` if there is none); SnapshotError
        when the key changed meanwhile (the image was replaced during the build: the template
        is of the old one, and its disk layer would corrupt the new one's)."""
        key = key_of()
        origin = f"{image.path.resolve()}:{spec.size_key}:{spec.network.value}"
        template, built = await self.templates.ensure(key, origin=origin, build=build)
        if built:
            _log.info("template_ready", key=key, size=spec.size_key, backend=self.name)
        if key_of() != key:
            raise SnapshotError(f"{image.path} changed while its template was being built")
        return template

    async def _until_ready(
        self,
        vm: Vm,
        *,
        started: float,
        deadline: Deadline,
        exit_status: Callable[[], int | None],
        token: str | None,
    ) -> None:
        """Wait for the agent's health, claim it with ``token`` (None: leave it unclaimed, as
        a pooled VM or a template is), and mark the VM ready."""
        if vm.agent_url is None:
            raise VmError(f"VM {vm.id} has no agent address")
        await wait_until_healthy(
            vm.agent_url,
            vm_id=vm.id,
            deadline=deadline,
            exit_status=exit_status,
            console_tail=lambda: self.console_tail(vm),
        )
        if token is not None:
            await claim_vm(vm, token=token)
        vm.time_to_healthy_s = time.monotonic() - started
        vm.ready_at = time.time()
        vm.move_to(VmState.READY)
        _log.info(
            "vm_ready",
            vm_id=vm.id,
            backend=self.name,
            boot_mode=vm.boot_mode.value,
            time_to_healthy_s=round(vm.time_to_healthy_s, 3),
        )

    def _watch(self, vm: Vm, exited: Awaitable[int]) -> None:
        """Fail ``vm`` (with its console tail) when ``exited`` says its VMM process ended,
        unless it is being torn down."""
        self._watchers[vm.id] = asyncio.create_task(self._watch_exit(vm, exited))

    async def _watch_exit(self, vm: Vm, exited: Awaitable[int]) -> None:
        status = await exited
        if vm.state in (VmState.STOPPING, VmState.DESTROYED):
            return
        console = self.console_tail(vm, 15)
        vm.error = f"VM {vm.id}: {self.vmm_label} exited with status {status}; console:\n{console}"
        vm.move_to(VmState.FAILED)
        _log.warning("vm_process_exited", vm_id=vm.id, backend=self.name, status=status)

    async def _abandon(self, vm: Vm, exc: BaseException) -> None:
        """A start failed with ``exc``: note why, and leave nothing of the VM behind."""
        vm.error = exc.message if isinstance(exc, HearthError) else type(exc).__name__
        if vm.state is not VmState.FAILED:
            vm.move_to(VmState.FAILED)
        await self._destroy_quietly(vm)

    async def _destroy_quietly(self, vm: Vm) -> None:
        """Destroy during error handling: log teardown errors, keep the original one."""
        try:
            await self.destroy(vm)
        except (VmError, VmStateError) as exc:
            _log.warning("vm_teardown_failed", vm_id=vm.id, error=exc.message[:500])

    # ---- the VMM's own steps ---------------------------------------------------------------

    def _admit(self, image: ImageDir, spec: VmSpec, vm_id: str) -> str:
        """Refuse what this VMM cannot run (InvalidInput, VmError, NotAnImage); the VM's id."""
        return vm_id

    @abstractmethod
    async def _template_for(self, image: ImageDir, spec: VmSpec) -> TemplateT:
        """The snapshot template of (image, spec), built first if needed."""

    @abstractmethod
    async def _start(
        self, vm_id: str, image: ImageDir, spec: VmSpec, *, template: TemplateT | None, claim: bool
    ) -> Vm:
        """Boot (or restore from ``template``) a VM until its agent is healthy (and claimed)."""

    @abstractmethod
    async def _teardown(self, vm: Vm) -> list[str]:
        """Stop the VM's process and remove all it holds; return what could not be removed."""

    @abstractmethod
    def _found_vm(self, workdir: Path) -> Vm | None:
        """The VM a work directory's record describes, if it can be read."""

    @abstractmethod
    async def _reap_leftovers(self, keep: set[str]) -> list[str]:
        """Remove what no VM in ``keep`` holds besides work dirs; return what was removed."""

    @abstractmethod
    def _host_leftovers(self) -> list[str]:
        """The VMM's processes, control sockets and claimed network slots still on the host,
        each in a short sentence (work dirs and template builds are reported already)."""

    @abstractmethod
    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """The last lines of the VM's serial console."""
