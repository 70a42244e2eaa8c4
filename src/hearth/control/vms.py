"""VmService: the controller's VM lifecycle — admission, boot, persistence, teardown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Collection, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from hearth.config import Settings
from hearth.control.agent_hooks import BeforeDestroy
from hearth.control.agent_tokens import AgentTokens
from hearth.control.boots import STOPPED_BOOT, Boots, BootStopped
from hearth.control.destroy_on_exit import destroy_every_vm
from hearth.control.disk_use import DiskUse
from hearth.control.hibernation import Hibernation, set_guest_clock
from hearth.control.lifetimes import Lifetime, move_banking_time, running_fields
from hearth.control.network import CliNetworks
from hearth.control.pool import POOL_USER, WarmPool
from hearth.control.quotas import DiskQuota, Quotas
from hearth.control.teardown import Teardowns
from hearth.control.vm_keys import HeldKeys, VmKeys
from hearth.control.workspaces import Workspaces
from hearth.errors import Conflict, HearthError, InvalidInput, NotFound, VmError
from hearth.events.log import EventLog
from hearth.events.types import EventType
from hearth.keyed_locks import KeyedLocks
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.node.interface import Node
from hearth.periodic import every
from hearth.store import INACTIVE_VM_STATES, Store, VmRecord
from hearth.store.records import RUNNING_VM_STATES, utc_now
from hearth.vm.host import new_vm_id
from hearth.vm.types import Vm, VmSpec, VmState, VmType

_log = get_logger("control.vms")
ACTIVE = tuple(state for state in VmState if state not in INACTIVE_VM_STATES)
# A VM whose VMM runs and which the controller adopts after a restart.
RUNNING = RUNNING_VM_STATES
# What a listing shows unless asked for other statuses: every VM not destroyed (failed ones too,
# with the error that ended them).
LISTED = tuple(state for state in VmState if state is not VmState.DESTROYED)


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


class VmService:
    """Creates, tracks and destroys users' VMs; the only writer of VM rows."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        node: Node,
        metrics: ControllerMetrics,
        quotas: Quotas,
        tokens: AgentTokens,
        keys: VmKeys,
        pool_sizes: dict[VmType, int] | None = None,
        before_destroy: Sequence[BeforeDestroy] = (),
        networks: CliNetworks | None = None,
        events: EventLog | None = None,
        workspaces: Workspaces | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.node = node
        self.metrics = metrics
        self.quotas = quotas
        disk_use = DiskUse(store=store, node=node)
        self.disk_quota = DiskQuota(limit_mib=settings.user_disk_quota_mib, disk_use=disk_use)
        # Agent tokens sealed into the VMs' rows, for a controller that restarts.
        self.tokens = tokens
        # Disk keys (and hibernated VMs' saved-state keys) sealed into the rows.
        self.keys = keys
        self.hibernation = Hibernation(self, keys)
        # CLI VMs' egress paths (None: CLI VMs have no way out at all).
        self.networks = networks
        # Where vm.ready and vm.failed are told (None: nowhere; tests of other parts).
        self.events = events
        # Users' persistent workspaces, attached to their CLI VMs (None: none).
        self.workspaces = workspaces
        self.live: dict[str, Vm] = {}
        self.admission = asyncio.Lock()  # the host's (memory, Browser VMs)
        self.admitting = KeyedLocks()  # each owner's (their VMs, disk), through a hand-out's mount
        # One VM's pause, resume, hibernation, wake and teardown take turns: each reads the row
        # and acts on the VM in its turn, so none meets a VM another is changing (a destroy's
        # pull-back on a VM a pause just stopped). Taken inside a user's credential turn
        # (``Delivery``), never the other way round; a wake takes ``admission`` inside it.
        self.turns = KeyedLocks()
        self._tasks: set[asyncio.Task[Any]] = set()
        # The boots under way, which a destroy stops before it frees the VM's place.
        self.boots = Boots()
        self.teardowns = Teardowns(self)
        # The warm pool, when any type has one: it creates through this service, which hands
        # its VMs out on create.
        pool = WarmPool(self, sizes=pool_sizes or {})
        self.pool = pool if pool.enabled else None
        # Called with a ready VM's record and agent token before it is torn down (e.g. to pull
        # back rotated tokens).
        self.before_destroy = tuple(before_destroy)

    # ---- create ----------------------------------------------------------------------------

    def spec_for(self, vm_type: VmType, vcpus: int | None, mem_mib: int | None) -> VmSpec:
        """The VmSpec of a request, with the configured defaults per type."""
        return self.settings.vm_spec(vm_type, vcpus, mem_mib)

    async def create(
        self,
        *,
        user_id: str,
        spec: VmSpec,
        wait: bool = True,
        pooled: bool = False,
        lifetime: Lifetime | None = None,
    ) -> VmRecord:
        """Admit, persist and boot a VM; with ``wait`` return it healthy, else at once. A user's
        CLI VM gets ``lifetime`` (default: the settings'); pooled and Browser VMs get none."""
        owner = POOL_USER if pooled else user_id
        if pooled or spec.vm_type is not VmType.CLI:
            lifetime = Lifetime()
        lifetime = lifetime or Lifetime.defaults(self.settings)
        lifetime.check_carried_out_by(self.node)
        self.node.check_image(spec.vm_type)
        await self.store.users.ensure(owner)
        async with contextlib.AsyncExitStack() as turns:  # the owner's, then the host's
            await turns.enter_async_context(self.admitting.held(owner))  # through a hand-out
            if not pooled:
                await self.quotas.admit_user(self.store, user_id=user_id, spec=spec)
                await self.disk_quota.admit_vm(user_id, spec, self.workspaces)
                if self.pool is not None:
                    handed = await self.pool.take(user_id, spec, lifetime)
                    if handed is not None:
                        return handed
            # A VM that will start (the pool had none to hand out, or this is a refill): the host
            # must have room for it, judged and taken in the host's turn.
            await turns.enter_async_context(self.admission)
            await self.quotas.admit_new_vm(self.store, spec=spec)
            record = await self._insert(
                VmRecord(
                    id=new_vm_id(),
                    user_id=owner,
                    vm_type=spec.vm_type,
                    backend=self.node.vmm,
                    vcpus=spec.vcpus,
                    mem_mib=spec.mem_mib,
                    pooled=pooled,
                    timeout_s=lifetime.timeout_s,
                    timeout_action=lifetime.timeout_action,
                    idle_timeout_s=lifetime.idle_timeout_s,
                    idle_action=lifetime.idle_action,
                    auto_resume=lifetime.auto_resume,
                )
            )
        _log.info("vm_create_accepted", vm_id=record.id, user_id=owner, vm_type=spec.vm_type.value)
        task = self._spawn(self._boot(record, spec, pooled=pooled))
        self.boots.add(record.id, task)
        if not wait:
            return record
        return await asyncio.shield(task)

    async def _insert(self, record: VmRecord) -> VmRecord:
        """Persist a new row; a caller that gives up meanwhile leaves no row behind.

        The row is written by the database whether or not this coroutine is still awaited. A
        caller cancelled during the write (a cancelled login, a dropped request) would leave a
        ``creating`` row that no boot follows, holding the user's and the host's quota: so the
        write is finished, and the row destroyed, before the cancel goes on.
        """
        insert = asyncio.ensure_future(self.store.vms.insert(record))
        try:
            return await asyncio.shield(insert)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                written = await insert
                await self.destroy(written.id, include_pooled=True)
                _log.info("vm_create_abandoned", vm_id=written.id, user_id=written.user_id)
            raise

    async def wait_booted(self, vm_id: str) -> VmRecord:
        """Wait for a VM created with ``wait=False`` to finish booting; raises if the boot failed.

        Giving up on the wait (cancel, timeout) leaves the boot running: whoever gave up must
        destroy the VM, which stops the boot (``Boots``).
        """
        task = self.boots.get(vm_id)
        # The boot's outcome; once it is over, the row's.
        record = await asyncio.shield(task) if task is not None else await self.store.vms.get(vm_id)
        if record.status is not VmState.READY:
            raise VmError(f"VM {vm_id} is {record.status.value}: {record.error or 'no reason'}")
        return record

    def _spawn(self, coro: Coroutine[Any, Any, VmRecord]) -> asyncio.Task[VmRecord]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Failures are recorded on the row; a caller that did not wait never reads the task.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _boot(self, record: VmRecord, spec: VmSpec, *, pooled: bool) -> VmRecord:
        started = time.monotonic()
        try:
            await self.store.vms.transition(record.id, VmState.CREATING, VmState.BOOTING)
            spec = await self.with_egress(record.id, spec)
            vm = await self.boots.vmm(record.id, self.node.create(spec, vm_id=record.id))
        except BootStopped:
            return await self._boot_stopped(record.id)
        except HearthError as exc:
            return await self._fail(record.id, stage="boot", error=exc)
        except Exception as exc:
            _log.exception("vm_boot_crashed", vm_id=record.id)
            await self._fail(record.id, stage="boot", error=VmError(f"{type(exc).__name__}"))
            raise
        self.live[vm.id] = vm
        if not pooled:
            try:
                if (await self.store.vms.get(vm.id)).status is VmState.BOOTING:
                    await self.attach_workspace(record.user_id, vm)  # not once failed
            except HearthError as exc:
                return await self._fail(record.id, stage="workspace", error=exc)
            except Exception as exc:
                _log.exception("vm_workspace_crashed", vm_id=record.id)
                error = VmError(f"attaching the workspace failed: {type(exc).__name__}")
                return await self._fail(record.id, stage="workspace", error=error)
        elapsed = time.monotonic() - started
        self.metrics.create_to_healthy.labels(boot_mode=vm.boot_mode.value).observe(elapsed)
        try:
            # Its lifetime and idle time start at the hand-over, not when its VMM was ready.
            fields = {**self.fields_of(vm), "running_since": utc_now()}
            ready = await self.store.vms.transition(vm.id, VmState.BOOTING, VmState.READY, **fields)
        except Conflict:
            # Failed while booting (the monitor saw its VMM end): the row says so; drop it.
            self.live.pop(vm.id, None)
            await self.discard(vm)
            return await self.store.vms.get(vm.id)
        except Exception as exc:  # a store error: its VMM must not run on, counted nowhere
            _log.exception("vm_ready_crashed", vm_id=vm.id)
            await self._fail(vm.id, stage="boot", error=VmError(f"{type(exc).__name__}"))
            raise
        await self.announce(EventType.VM_READY, ready)
        return ready

    async def _boot_stopped(self, vm_id: str) -> VmRecord:
        """A destroy stopped the boot before its VMM was up (the node ended all it had
        started): its path out closed, its row failed for the teardown to finish."""
        if self.networks is not None:
            await self.networks.close(vm_id)
        with contextlib.suppress(Conflict):
            return await self.store.vms.transition(
                vm_id, (VmState.CREATING, VmState.BOOTING), VmState.FAILED, error=STOPPED_BOOT
            )
        return await self.store.vms.get(vm_id)

    async def attach_workspace(self, user_id: str, vm: Vm) -> None:
        """Give ``user_id``'s CLI VM their workspace before it is handed to them (a booted VM
        or a pooled one); the error when it cannot be: the VM must not run without their files."""
        if self.workspaces is not None:
            await self.workspaces.attach(user_id, vm)

    async def announce(self, event_type: EventType, record: VmRecord, **data: object) -> None:
        """Tell the event log about a user's VM (pooled VMs are nobody's yet: not told)."""
        if self.events is not None and not record.pooled:
            await self.events.emit(
                event_type,
                user_id=record.user_id,
                vm_id=record.id,
                vmType=record.vm_type.value,
                **data,
            )

    async def with_egress(self, vm_id: str, spec: VmSpec) -> VmSpec:
        """A CLI VM gets its egress path's forward; other VMs as they are."""
        if self.networks is None or spec.vm_type is not VmType.CLI:
            return spec
        forward = await self.networks.open(vm_id)
        return dataclasses.replace(spec, guest_forwards=(*spec.guest_forwards, forward))

    def fields_of(self, vm: Vm) -> dict[str, object]:
        return {
            "agent_url": vm.agent_url,
            "ip": vm.agent_url.split("//", 1)[1].rsplit(":", 1)[0] if vm.agent_url else None,
            "host_port": int(vm.agent_url.rsplit(":", 1)[1]) if vm.agent_url else None,
            "pid": vm.pid,
            "workdir": vm.workdir,
            "disk_path": vm.workdir / "disk.qcow2" if vm.workdir else None,
            "disk_bytes": vm.disk_bytes,
            **self.tokens.fields(vm.id, vm.token),
            **self.keys.fields(vm.id, HeldKeys(disk=vm.disk_key)),
            "boot_mode": vm.boot_mode,
            "ready_at": _ts(vm.ready_at),
            "running_since": _ts(vm.ready_at),
            "agent_version": vm.agent_version,
        }

    async def _fail(self, vm_id: str, *, stage: str, error: HearthError) -> VmRecord:
        self.metrics.failures.labels(stage=stage).inc()
        _log.warning("vm_failed", vm_id=vm_id, stage=stage, error=error.message[:300])
        vm = self.live.pop(vm_id, None)
        if vm is not None:
            await self.discard(vm)
        elif self.networks is not None:
            await self.networks.close(vm_id)
        failable = (VmState.CREATING, VmState.BOOTING, *RUNNING)
        try:
            record = await move_banking_time(
                self.store, vm_id, failable, VmState.FAILED, error=error.message[:2000]
            )
        except Conflict:
            record = await self.store.vms.get(vm_id)
        else:
            await self.announce(EventType.VM_FAILED, record, stage=stage, error=record.error)
        if record.status is VmState.FAILED and not record.pooled:
            raise error
        return record

    async def discard(self, vm: Vm) -> None:
        """End ``vm``'s VMM and files (an error logged) and close its egress path."""
        try:
            await self.node.destroy(vm)
        except HearthError as exc:
            _log.warning("vm_destroy_error", vm_id=vm.id, error=exc.message[:300])
        if self.networks is not None:
            await self.networks.close(vm.id)

    # ---- read ------------------------------------------------------------------------------

    async def get(
        self, vm_id: str, *, user_id: str | None = None, include_pooled: bool = False
    ) -> VmRecord:
        """The VM, if it exists and (for a user key) belongs to ``user_id``; else NotFound."""
        record = await self.store.vms.get(vm_id)
        theirs = user_id is None or record.user_id == user_id
        if not theirs or (record.pooled and not include_pooled):
            raise NotFound(f"VM {vm_id} does not exist")
        return record

    async def list_vms(
        self, *, user_id: str | None = None, statuses: Collection[VmState] = LISTED
    ) -> list[VmRecord]:
        """Users' VMs (pooled ones are not anybody's yet), oldest first; by default every one
        not destroyed (the destroyed stay in the store: their history)."""
        return await self.store.vms.page(user_id=user_id, statuses=statuses)

    async def page_vms(
        self, *, user_id: str | None, statuses: Collection[VmState], after: str | None, limit: int
    ) -> tuple[list[VmRecord], str | None]:
        """``list_vms`` a page at a time: ``limit`` VMs at most, after VM ``after`` (the last of
        the page before), and the ``after`` of the next page (None: this one is the last).
        InvalidInput when ``after`` names no VM the caller could have listed."""
        if after is not None:
            try:
                await self.get(after, user_id=user_id)
            except NotFound:
                raise InvalidInput(f"after: VM {after} does not exist") from None
        page = await self.store.vms.page(
            user_id=user_id, statuses=statuses, after=after, limit=limit + 1
        )
        return page[:limit], page[limit - 1].id if len(page) > limit else None

    def console(self, record: VmRecord, lines: int = 100) -> str:
        """The VM's serial console tail."""
        vm = self.live.get(record.id)
        if vm is None:
            if record.workdir is None:
                return ""
            vm = Vm(id=record.id, spec=VmSpec(), backend=record.backend, workdir=record.workdir)
        return self.node.console_tail(vm, lines)

    def agent_token(self, vm_id: str) -> str | None:
        """The live VM's agent token (held in memory; kept sealed in the VM's row)."""
        vm = self.live.get(vm_id)
        return vm.token if vm else None

    def alive(self, vm_id: str) -> bool:
        """Whether the controller holds VM ``vm_id`` and its VMM process still runs."""
        vm = self.live.get(vm_id)
        return vm is not None and self.node.alive(vm)

    def live_vm(self, vm_id: str) -> Vm:
        """The running VM object; NotFound when the controller holds none."""
        vm = self.live.get(vm_id)
        if vm is None:
            raise NotFound(f"VM {vm_id} is not running")
        return vm

    # ---- change ----------------------------------------------------------------------------

    async def destroy(
        self, vm_id: str, *, user_id: str | None = None, include_pooled: bool = False
    ) -> VmRecord:
        """Tear the VM down and mark it destroyed; idempotent, also under concurrency.

        Concurrent destroys of one VM share a single teardown (so the ``before_destroy`` hooks,
        e.g. the credential pull-back, run once) and all return its destroyed record; destroying
        a destroyed VM returns it unchanged. A pause, resume, hibernation or wake of the VM under
        way ends first (``Teardowns``).
        """
        record = await self.get(vm_id, user_id=user_id, include_pooled=include_pooled)
        if record.status is VmState.DESTROYED:
            return record
        return await self.teardowns.join(vm_id)

    async def pause(self, vm_id: str, *, user_id: str | None = None) -> VmRecord:
        """Pause a ready VM (in its turn)."""
        await self.get(vm_id, user_id=user_id)  # not theirs: 404 before any wait for its turn
        async with self.turns.held(vm_id):
            record = await self.get(vm_id, user_id=user_id)
            return await self._switch(record, VmState.READY, VmState.PAUSED, "paused")

    async def resume(self, vm_id: str, *, user_id: str | None = None) -> VmRecord:
        """Resume a paused VM, or wake a hibernated one (in its turn)."""
        await self.get(vm_id, user_id=user_id)  # as pause: 404 before any wait for its turn
        async with self.turns.held(vm_id):
            record = await self.get(vm_id, user_id=user_id)
            if record.status is VmState.HIBERNATED:
                return await self.hibernation.wake(record)
            return await self._switch(record, VmState.PAUSED, VmState.READY, "resumed")

    async def _switch(self, record: VmRecord, old: VmState, new: VmState, done: str) -> VmRecord:
        """Pause or resume: the node moves the VM, then its row follows."""
        vm_id = record.id
        if record.status is not old:
            only = f"a {old.value} VM" if done == "paused" else "a paused or hibernated VM"
            raise Conflict(f"VM {vm_id} is {record.status.value}; only {only} can be {done}")
        vm = self.live_vm(vm_id)
        await (self.node.pause(vm) if new is VmState.PAUSED else self.node.resume(vm))
        try:
            if new is VmState.READY:
                await set_guest_clock(vm)  # it stood still while the VM was paused
        finally:
            # The VM has moved: its row follows, however the clock's setting (best effort) ended.
            moved = await self.store.vms.transition(
                vm_id, old, new, **running_fields(record, new, utc_now())
            )
        return moved

    # ---- reliability -----------------------------------------------------------------------

    async def watch_once(self) -> list[str]:
        """Mark every live VM whose process died as failed; returns their ids."""
        died = []
        for vm_id, vm in list(self.live.items()):
            if self.node.alive(vm) or vm.state in (VmState.HIBERNATING, VmState.HIBERNATED):
                continue  # alive, or ended on purpose by a hibernation
            tail = self.node.console_tail(vm, 15)
            error = VmError(f"VM {vm_id}: QEMU process exited; console:\n{tail}")
            await self.fail_running(vm_id, stage="running", error=error)
            died.append(vm_id)
        return died

    async def fail_running(self, vm_id: str, *, stage: str, error: HearthError) -> None:
        """Mark a running VM failed (``error`` says why, ``stage`` labels the metric) and tear
        down what is left of it; ``vm.failed`` is told."""
        with contextlib.suppress(HearthError):
            await self._fail(vm_id, stage=stage, error=error)

    async def monitor(self, interval_s: float = 1.0) -> None:
        """Run ``watch_once`` forever (cancel to stop)."""

        async def watch() -> None:
            await self.watch_once()
            await self.refresh_gauges()

        await every(interval_s, watch, what="VM monitor")

    async def refresh_gauges(self) -> None:
        """Set the VMs-by-status gauge from the store."""
        counts = dict.fromkeys(ACTIVE, 0)
        for record in await self.store.vms.list(statuses=ACTIVE):
            counts[record.status] += 1
        for status, count in counts.items():
            self.metrics.vms.labels(status=status.value).set(count)

    async def shutdown(self, *, destroy_vms: bool) -> None:
        """Stop background boots; with ``destroy_vms`` also destroy every VM, hibernated ones
        and their saved state included (``destroy_on_exit``), else cut short the saves under
        way (``Hibernation``)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Teardowns run on when their callers are cancelled (a login stopped by this shutdown
        # destroying what it made): they end before the store closes under them.
        await self.teardowns.wait()
        if destroy_vms:
            await destroy_every_vm(self)
        await self.hibernation.stop()

    async def wait_idle(self) -> None:
        """Wait for background boots (tests and shutdown)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
