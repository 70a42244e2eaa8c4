"""The warm pool: N healthy, claimed VMs per type, handed out on create and refilled behind.

Pooled VMs are restored from the template and claimed like any other (``POST /init`` gives the
agent a token of its own, the controller keeps it sealed in the row, and the claim sets the
clock and reseeds the guest's entropy, so every pooled clone is unique from its start), but
they hold no user's data. Claiming them as they join the pool, not at hand-out, leaves no
window in which something else on the host could claim an idle pooled agent first, and keeps
the agent round trip off the user's path: a hand-out gives the row to the user and attaches
their workspace (CLI VMs); the refill loop then boots a replacement in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from hearth.control.lifetimes import move_banking_time
from hearth.errors import CapacityExhausted, Conflict, HearthError, VmError
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.store import VmRecord
from hearth.store.records import RUNNING_VM_STATES, utc_now
from hearth.store.repositories.users import POOL_USER as POOL_USER  # its owner, named here too
from hearth.vm.readiness import Backoff
from hearth.vm.types import Vm, VmSpec, VmState, VmType

if TYPE_CHECKING:
    from hearth.control.lifetimes import Lifetime
    from hearth.control.vms import VmService

_log = get_logger("control.pool")

# The longest a pool waits between refills of a type whose refills keep failing.
REFILL_BACKOFF_CAP_S = 300.0
# How many of the pool's failed VMs (each a failed refill, or a pooled VM that died) keep their
# row failed, the newest, their errors there to read; older ones are destroyed.
FAILED_KEPT = 3


class WarmPool:
    """Keeps ``sizes[vm_type]`` ready VMs of each type's default spec."""

    def __init__(
        self, service: VmService, *, sizes: dict[VmType, int], refill_interval_s: float = 0.5
    ) -> None:
        self.service = service
        self.sizes = {t: n for t, n in sizes.items() if n > 0}
        self.refill_interval_s = refill_interval_s
        self._waiting_for_room: set[VmType] = set()
        self._ready: dict[VmType, list[str]] = {t: [] for t in VmType}
        self._task: asyncio.Task[None] | None = None
        # Per type after a failed refill: its next delays, when it may try again, the delay
        # last logged.
        self._delays: dict[VmType, Iterator[float]] = {}
        self._retry_at: dict[VmType, float] = {}
        self._delay_logged: dict[VmType, float] = {}
        self._lock = asyncio.Lock()
        # Advanced by ``recycle``: a VM whose refill began before it may come from the old
        # images (an agent rollout carried into them meanwhile) and never joins the pool.
        self._generation = 0

    @property
    def enabled(self) -> bool:
        """Whether any type has a pool."""
        return bool(self.sizes)

    def spec(self, vm_type: VmType) -> VmSpec:
        """The spec pooled VMs of a type are made with (the type's defaults)."""
        return self.service.spec_for(vm_type, None, None)

    async def start(self) -> None:
        """Take in the pooled VMs that survived a restart (``settle_adopted``), then refill in
        the background."""
        for vm_type, kept in (await settle_adopted(self.service, self.sizes)).items():
            self._ready[vm_type].extend(kept)
        await self.prune_failed()  # what the last controller (and reconciliation) left
        self._task = asyncio.create_task(self._refill_forever())

    async def stop(self) -> None:
        """Stop refilling and destroy the unassigned VMs."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.recycle()

    async def recycle(self) -> int:
        """Destroy the unassigned VMs (the refill, if running, boots new ones: from a new
        template once the images changed), and any VM a refill is booting now as it arrives;
        how many there were."""
        self._generation += 1
        destroyed = 0
        for vm_type in VmType:
            while self._ready[vm_type]:
                vm_id = self._ready[vm_type].pop()
                with contextlib.suppress(HearthError):
                    await self.service.destroy(vm_id, user_id=None, include_pooled=True)
                destroyed += 1
        return destroyed

    async def prune_failed(self) -> int:
        """Destroy the pool's failed VMs but the newest ``FAILED_KEPT`` (by when they failed):
        nobody else ever ends them (a pooled VM is nobody's), so each failed refill would leave
        its row failed for good. Only rows the pool still owns: a user's VM is never one. How
        many were destroyed; a store that does not answer is logged and tried next time."""
        try:
            failed = await self.service.store.vms.list(user_id=POOL_USER, statuses=[VmState.FAILED])
        except Exception as exc:
            _log.warning("pool_prune_failed", error=str(exc)[:300])
            return 0
        owned = sorted((r for r in failed if r.pooled), key=lambda r: (r.updated_at, r.id))
        pruned = 0
        for record in owned[: max(len(owned) - FAILED_KEPT, 0)]:
            try:
                await self.service.destroy(record.id, user_id=POOL_USER, include_pooled=True)
            except Exception as exc:
                _log.warning("pool_prune_failed", vm_id=record.id, error=str(exc)[:300])
                continue
            pruned += 1
        if pruned:
            _log.info("pool_failed_vms_pruned", count=pruned, kept=FAILED_KEPT)
        return pruned

    def size(self, vm_type: VmType) -> int:
        """How many ready VMs of a type wait in the pool (one whose VMM died, which the
        monitor fails, no longer counts: the refill replaces it)."""
        ready = self._ready[vm_type]
        ready[:] = [vm_id for vm_id in ready if self.service.alive(vm_id)]
        return len(ready)

    async def take(self, user_id: str, spec: VmSpec, lifetime: Lifetime) -> VmRecord | None:
        """Hand a pooled VM matching ``spec`` to ``user_id``, its ``lifetime`` starting now;
        None when none waits.

        A VM taken from the pool is no longer in it: a caller cancelled during its hand-out
        (a login's deadline, a dropped request) would leave it running, counted nowhere and
        holding the user's workspace. So the hand-out is finished, and the VM destroyed, before
        the cancel goes on.

        Called in the user's admission turn (``VmService.admitting``), not the host's: a
        hand-out adds no VM to the host, and its mount, however slow, holds back only that
        user's next create, which then counts the VM as theirs.
        """
        if spec != self.spec(spec.vm_type):
            return None
        started = time.monotonic()
        while self._ready[spec.vm_type]:
            vm_id = self._ready[spec.vm_type].pop(0)
            handout = asyncio.ensure_future(self._hand_out(vm_id, user_id, lifetime))
            try:
                record = await asyncio.shield(handout)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    handed = await handout
                    if handed is not None:
                        await self.service.destroy(handed.id, user_id=None)
                        _log.info("pool_handout_abandoned", vm_id=handed.id, user_id=user_id)
                raise
            if record is None:
                continue
            self.service.metrics.pool_handouts.labels(vm_type=spec.vm_type.value).inc()
            self.service.metrics.pool_size.labels(vm_type=spec.vm_type.value).set(
                self.size(spec.vm_type)
            )
            self.service.metrics.create_to_healthy.labels(boot_mode="pool").observe(
                time.monotonic() - started
            )
            _log.info("pool_handout", vm_id=vm_id, user_id=user_id)
            await self.service.announce(EventType.VM_READY, record)
            return record
        return None

    async def _hand_out(self, vm_id: str, user_id: str, lifetime: Lifetime) -> VmRecord | None:
        """Give the pooled VM ``vm_id`` to ``user_id`` (its workspace attached); None, with the
        VM ended, when it cannot serve (ended, unhealthy, failed during the hand-out).

        An attach that fails while the VM stays healthy is the user's workspace's fault, not
        the VM's: raised (the next pooled VM would fail the same way), the VM kept in the pool
        unless it holds that workspace still. A store error is raised too, the VM ended without
        the store (``_end_failed``).
        """
        vm = self.service.live.get(vm_id)
        if vm is None or not self.service.node.alive(vm):
            return None
        pooled = await self.service.store.vms.get(vm_id)
        if not pooled.pooled:
            return None
        if pooled.status is not VmState.READY:
            # Unhealthy: the monitor saw its agent stop answering.
            _log.warning("pool_handout_failed", vm_id=vm_id, error=pooled.status.value)
            with contextlib.suppress(HearthError):
                await self.service.destroy(vm_id, user_id=None, include_pooled=True)
            return None
        try:
            await self.service.attach_workspace(user_id, vm)
        except Exception as exc:
            if not await self._still_ready(vm):
                await self._end_failed(vm, exc)
                return None
            await self._refuse(vm, exc)
            if isinstance(exc, HearthError):
                raise
            raise VmError(f"attaching the workspace failed: {type(exc).__name__}") from exc
        if not self.service.node.alive(vm):  # died as the workspace went in
            await self._end_failed(vm, VmError(f"pooled VM {vm_id} ended during its hand-out"))
            return None
        try:
            # Compare-and-set: a row failed (or taken) meanwhile no longer holds its token and
            # error as read, and is not handed out. Its status is no updatable field: checked
            # after the write (a move to unhealthy in between is the heartbeat's to judge).
            record = await self.service.store.vms.update_if(
                vm_id,
                {"pooled": True, "error": pooled.error, "token_hash": pooled.token_hash},
                user_id=user_id,
                pooled=False,
                **lifetime.fields(),
                lifetime_used_s=0.0,
                running_since=utc_now(),
            )
        except Exception as exc:
            await self._end_failed(vm, exc)
            raise
        if record is None:
            await self._end_failed(vm, Conflict(f"pooled VM {vm_id} changed during its hand-out"))
            return None
        return record

    async def _still_ready(self, vm: Vm) -> bool:
        """Whether ``vm`` still runs and its row is ready (a store that cannot say: no)."""
        if not self.service.node.alive(vm):
            return False
        try:
            return (await self.service.store.vms.get(vm.id)).status is VmState.READY
        except Exception:
            return False

    async def _refuse(self, vm: Vm, exc: Exception) -> None:
        """The user's workspace would not attach to the healthy pooled ``vm``: its claim given
        up, the VM back at the pool's head; ended instead when the claim stays, or the volume
        was plugged in (it would carry the user's disk to the next one)."""
        _log.warning("pool_handout_refused", vm_id=vm.id, error=str(exc)[:300])
        if not vm.volumes and await self._release_workspace(vm):
            self._ready[vm.spec.vm_type].insert(0, vm.id)
        else:
            await self._end_failed(vm, exc)

    async def _end_failed(self, vm: Vm, exc: Exception) -> None:
        """End a pooled VM whose hand-out failed without the store (which may be what failed):
        out of service, its VMM ended through the node, the workspace it may have claimed given
        up and its row failed when the store answers (out of the live set, no monitor would:
        a row left ready counted against the host's memory until a restart)."""
        _log.warning("pool_handout_failed", vm_id=vm.id, error=str(exc)[:300])
        self.service.live.pop(vm.id, None)
        try:
            await self.service.discard(vm)
        except Exception as error:  # its egress path's row: the VMM itself is ended first
            _log.warning("pool_handout_discard_error", vm_id=vm.id, error=str(error)[:300])
        await self._release_workspace(vm)
        try:
            await move_banking_time(
                self.service.store,
                vm.id,
                (VmState.CREATING, VmState.BOOTING, *RUNNING_VM_STATES),
                VmState.FAILED,
                error=f"its hand-out failed: {str(exc)[:300]}",
            )
        except Conflict:
            pass  # failed or destroyed already
        except Exception as error:  # the store: the next reconciliation fails the row
            _log.warning("pool_handout_row_not_failed", vm_id=vm.id, error=str(error)[:300])

    async def _release_workspace(self, vm: Vm) -> bool:
        """Give up the workspace ``vm`` claimed, if any; whether it holds none now."""
        if self.service.workspaces is None:
            return True
        try:
            return await self.service.workspaces.release(vm.id)
        except Exception as error:
            _log.warning("pool_workspace_release_failed", vm_id=vm.id, error=str(error)[:300])
            return False

    async def _refill_forever(self) -> None:
        while True:
            # A pass that refilled replaced a VM that left the pool: handed out, or failed (a
            # refill that failed, a pooled VM that died), whose row the pass's end prunes.
            refilled = False
            for vm_type, wanted in self.sizes.items():
                if time.monotonic() < self._retry_at.get(vm_type, 0.0):
                    continue  # backing off after a failed refill
                while self.size(vm_type) < wanted:
                    generation = self._generation
                    refilled = True
                    try:
                        record = await self.service.create(
                            user_id=POOL_USER, spec=self.spec(vm_type), wait=True, pooled=True
                        )
                    except CapacityExhausted as exc:
                        # The host is full: wait quietly (said once) until there is room again.
                        if vm_type not in self._waiting_for_room:
                            self._waiting_for_room.add(vm_type)
                            _log.info(
                                "pool_refill_waiting_for_room",
                                vm_type=vm_type.value,
                                reason=exc.message,
                            )
                        break
                    except HearthError as exc:
                        _log.warning("pool_refill_failed", vm_type=vm_type.value, error=exc.message)
                        self._back_off(vm_type)
                        break
                    except Exception:  # a full disk, a bug: tried again, never the pool's end
                        _log.exception("pool_refill_crashed", vm_type=vm_type.value)
                        self._back_off(vm_type)
                        break
                    self._waiting_for_room.discard(vm_type)
                    if record.status is not VmState.READY:
                        self._back_off(vm_type)
                        break
                    self._recovered(vm_type)
                    if generation != self._generation:
                        _log.info("pool_refill_outdated", vm_id=record.id, vm_type=vm_type.value)
                        with contextlib.suppress(HearthError):
                            await self.service.destroy(record.id, user_id=None, include_pooled=True)
                        continue
                    self._ready[vm_type].append(record.id)
                    self.service.metrics.pool_size.labels(vm_type=vm_type.value).set(
                        self.size(vm_type)
                    )
            if refilled:
                await self.prune_failed()
            await asyncio.sleep(self.refill_interval_s)

    def _back_off(self, vm_type: VmType) -> None:
        """A refill of ``vm_type`` failed: its next one waits twice as long as the last wait
        (from the refill interval up to ``REFILL_BACKOFF_CAP_S``), not every interval for ever
        (each attempt a boot and a failed row); the wait logged when it changes."""
        delays = self._delays.get(vm_type)
        if delays is None:
            backoff = Backoff(initial_s=self.refill_interval_s, cap_s=REFILL_BACKOFF_CAP_S)
            delays = self._delays[vm_type] = backoff.delays()
        delay = next(delays)
        self._retry_at[vm_type] = time.monotonic() + delay
        if delay != self._delay_logged.get(vm_type):
            self._delay_logged[vm_type] = delay
            _log.warning("pool_refill_backing_off", vm_type=vm_type.value, retry_in_s=delay)

    def _recovered(self, vm_type: VmType) -> None:
        """A refill of ``vm_type`` came out ready: its next one waits no longer."""
        self._retry_at.pop(vm_type, None)
        if self._delays.pop(vm_type, None) is not None:
            self._delay_logged.pop(vm_type, None)
            _log.info("pool_refill_recovered", vm_type=vm_type.value)


async def settle_adopted(
    service: VmService, sizes: Mapping[VmType, int]
) -> dict[VmType, list[str]]:
    """Settle the pooled VMs reconciliation adopted after a crash (a clean stop destroys them)
    against this controller's pool: per type, up to ``sizes[type]`` ready ones of the type's
    spec now are kept, returned for the pool; every other one is destroyed.

    Run at every start, a pool or none: pooled VMs are nobody's, never listed nor ended by a
    lifetime, so one that no pool takes in (the pool now off or smaller) would hold its memory
    and its place under the host's limits for good. One of another size than the type's default
    now would be handed out at a size nobody asked for; one not ready would hold a place in the
    pool that the refill never fills again; one holding a workspace was being handed out.
    """
    kept: dict[VmType, list[str]] = {t: [] for t in VmType}
    for record in await service.store.vms.list(user_id=POOL_USER):
        if not record.pooled or record.id not in service.live:
            continue  # not adopted: failed (or destroyed) by reconciliation
        spec = service.spec_for(record.vm_type, None, None)
        if await service.store.workspaces.held_by(record.id) is not None:
            reason = "holds a workspace: the last controller ended mid-hand-out"
        elif (record.vcpus, record.mem_mib) != (spec.vcpus, spec.mem_mib):
            reason = "not of its type's default size now"
        elif record.status is not VmState.READY:
            reason = f"{record.status.value}, not ready"
        elif len(kept[record.vm_type]) >= sizes.get(record.vm_type, 0):
            reason = "beyond the pool's size now"
        else:
            kept[record.vm_type].append(record.id)
            continue
        _log.warning("pool_vm_left_by_a_crash_destroyed", vm_id=record.id, reason=reason)
        with contextlib.suppress(HearthError):
            await service.destroy(record.id, user_id=None, include_pooled=True)
    return kept
