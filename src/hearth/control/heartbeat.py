"""Heartbeats: every running VM's agent asked ``/health`` on an interval, each ask with a deadline.

A VM whose VMM lives but whose agent misses ``heartbeat_misses`` heartbeats in a row becomes
``unhealthy`` (``vm.unhealthy``); one answer makes it ``ready`` again (``vm.recovered``: the
guest's init or systemd restarted the agent, or the guest was only stalled); unhealthy for
``unhealthy_deadline_s``, it fails and is torn down (``vm.failed``). A VMM that dies is the
monitor's (``VmService.watch_once``, failed within a second), not this.

Each answer carries the agent's version: the VM's row follows it, and the gauges of running VMs
per agent version and of agents older than ``HEARTH_AGENT_MIN_VERSION`` are set from the rows.
Paused VMs are not asked (their vCPUs are stopped); they keep the version they last reported.
Nor is a VM whose agent is being updated (``held``): its agent restarts on purpose.

A guest's root may replace the agent, so an answer is not trusted: a version that is not short
printable text counts as a missed heartbeat for that VM, and each VM's answer is handled on its
own (an error for one VM is logged and the round goes on), so no VM can stop the others' checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hearth.config import Settings
from hearth.control.vms import RUNNING, VmService
from hearth.errors import Conflict, HearthError, VmError
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.metrics import ControllerMetrics
from hearth.periodic import every
from hearth.store import VmRecord
from hearth.versions import is_outdated, version_problem
from hearth.vm.types import VmState

_log = get_logger("control.heartbeat")
# Heartbeats in flight at once: hundreds of VMs are asked in a few rounds, not all at once.
MAX_PROBES_AT_ONCE = 32


@dataclass
class _Misses:
    """One VM's heartbeats missed in a row, the last reason, and since when it is unhealthy."""

    count: int = 0
    reason: str = ""
    unhealthy_since: float | None = None


class Heartbeat:
    """Asks the agents of ready and unhealthy VMs, and moves the VMs between the two."""

    def __init__(self, *, vms: VmService, settings: Settings, metrics: ControllerMetrics) -> None:
        self.vms = vms
        self.metrics = metrics
        self.interval_s = settings.heartbeat_interval_s
        self.timeout_s = settings.heartbeat_timeout_s
        self.misses_allowed = settings.heartbeat_misses
        self.deadline_s = settings.unhealthy_deadline_s
        self.min_version = settings.agent_min_version
        self._misses: dict[str, _Misses] = {}
        self._probes = asyncio.Semaphore(MAX_PROBES_AT_ONCE)
        self._held: set[str] = set()

    @contextlib.contextmanager
    def held(self, vm_id: str) -> Iterator[None]:
        """Do not ask VM ``vm_id``'s agent while the block runs (its agent restarts on purpose:
        a live update), nor count what was missed before."""
        self._held.add(vm_id)
        self._misses.pop(vm_id, None)
        try:
            yield
        finally:
            self._held.discard(vm_id)
            self._misses.pop(vm_id, None)

    def is_outdated(self, record: VmRecord) -> bool:
        """Whether the VM's agent is older than ``HEARTH_AGENT_MIN_VERSION`` (never when unset)."""
        return is_outdated(record.agent_version, self.min_version)

    async def run(self) -> None:
        """Beat forever (cancel to stop); a round that fails is logged and the next one runs."""
        await every(self.interval_s, self.beat_once, what="heartbeat")

    async def beat_once(self) -> None:
        """Ask every ready or unhealthy VM this controller runs, then act on the answers."""
        records = [
            record
            for record in await self.vms.store.vms.list(statuses=(VmState.READY, VmState.UNHEALTHY))
            if record.id in self.vms.live and record.agent_url and record.id not in self._held
        ]
        answers = await asyncio.gather(*(self._probe(record.id) for record in records))
        for record, (version, reason) in zip(records, answers, strict=True):
            try:
                if version is not None:
                    await self._answered(record, version)
                else:
                    await self._missed(record, reason)
            except Conflict:
                continue  # destroyed, paused or failed meanwhile: that move wins
            except HearthError as exc:  # one VM must not stop the others' checks
                _log.warning("heartbeat_vm_failed", vm_id=record.id, error=exc.message[:300])
            except Exception:  # a bug for one VM, too: logged, and the round goes on
                _log.exception("heartbeat_vm_crashed", vm_id=record.id)
        for vm_id in set(self._misses) - {record.id for record in records}:
            del self._misses[vm_id]
        await self.refresh_gauges()

    async def _probe(self, vm_id: str) -> tuple[str | None, str]:
        """The version the VM's agent answered, or None and why not."""
        vm = self.vms.live.get(vm_id)
        if vm is None:
            return None, "the controller no longer holds the VM"
        async with self._probes:
            try:
                async with asyncio.timeout(self.timeout_s + 1.0):
                    version = await self.vms.node.probe_agent(vm, timeout_s=self.timeout_s)
            except HearthError as exc:
                return None, exc.message[:300]
            except TimeoutError:
                return None, f"no answer within {self.timeout_s:g} s"
        problem = version_problem(version)
        if problem is not None:
            _log.warning("agent_version_refused", vm_id=vm_id, reason=problem)
            return None, problem
        return version, ""

    async def _answered(self, record: VmRecord, version: str) -> None:
        self.metrics.heartbeats.labels(result="ok").inc()
        misses = self._misses.pop(record.id, None)
        if record.agent_version != version:
            _log.info("agent_version_seen", vm_id=record.id, version=version)
            record = await self.vms.store.vms.update(record.id, agent_version=version)
        if record.status is not VmState.UNHEALTHY:
            return
        recovered = await self.vms.store.vms.transition(
            record.id, VmState.UNHEALTHY, VmState.READY, error=None
        )
        since = misses.unhealthy_since if misses is not None else None
        down_s = round(time.monotonic() - since, 3) if since is not None else None
        _log.info("vm_recovered", vm_id=record.id, unhealthy_s=down_s)
        await self.vms.announce(EventType.VM_RECOVERED, recovered, unhealthyS=down_s)

    async def _missed(self, record: VmRecord, reason: str) -> None:
        if not self.vms.alive(record.id):
            return  # the VMM is gone: the monitor fails the VM
        self.metrics.heartbeats.labels(result="missed").inc()
        misses = self._misses.setdefault(record.id, _Misses())
        misses.count += 1
        misses.reason = reason
        if record.status is VmState.READY:
            if misses.count < self.misses_allowed:
                return
            error = (
                f"its agent missed {misses.count} heartbeats in a row (every "
                f"{self.interval_s:g} s): {reason}"
            )
            unhealthy = await self.vms.store.vms.transition(
                record.id, VmState.READY, VmState.UNHEALTHY, error=error
            )
            misses.unhealthy_since = time.monotonic()
            _log.warning("vm_unhealthy", vm_id=record.id, misses=misses.count, reason=reason)
            await self.vms.announce(
                EventType.VM_UNHEALTHY, unhealthy, misses=misses.count, error=error
            )
            return
        if misses.unhealthy_since is None:  # unhealthy before this controller started
            misses.unhealthy_since = time.monotonic()
        if time.monotonic() - misses.unhealthy_since < self.deadline_s:
            return
        del self._misses[record.id]
        await self.vms.fail_running(
            record.id,
            stage="unhealthy",
            error=VmError(
                f"VM {record.id}: its agent did not answer for {self.deadline_s:g} s "
                f"(HEARTH_UNHEALTHY_DEADLINE_S): {reason}"
            ),
        )

    async def refresh_gauges(self) -> None:
        """Set the gauges of running VMs per agent version and of outdated agents."""
        records = await self.vms.store.vms.list(statuses=RUNNING)
        self._set_version_gauges(record for record in records if not record.pooled)

    def _set_version_gauges(self, records: Iterable[VmRecord]) -> None:
        versions: Counter[str] = Counter()
        outdated = 0
        for record in records:
            versions[record.agent_version or "unknown"] += 1
            outdated += self.is_outdated(record)
        self.metrics.agent_versions.clear()
        for version, count in versions.items():
            self.metrics.agent_versions.labels(version=version).set(count)
        self.metrics.agents_outdated.set(outdated)
