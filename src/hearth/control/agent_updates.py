"""Live agent updates: the controller's own agent build pushed into running VMs, one by one or
as a rollout.

An update sends the bundle (``hearth.agent_bundle``) to the VM's agent, which checks its sha256,
stages it beside the running version, swaps, and restarts on it; a guard in the VM, running the
previous build, puts the previous version back by itself if the new one is not healthy within
the deadline. The controller requires the new version's answer within that deadline (plus a
grace for the restart): then ``agent.updated``; else it waits for the previous version to answer
again and reports ``agent.update_failed`` with the guard's reason. An update is refused (409)
while a login or a run is in progress in the VM, unless forced, and while another update of
the VM runs; meanwhile nothing new starts in the VM (``ExecService.hold``: a run, command or
terminal asked for then is refused with 409 naming the update). The VM is claimed before the
first await, so two updates asked for at once cannot both push. A rollout updates every ready
VM whose agent differs from the bundle, at most ``maxUnavailable`` at once, one rollout at a
time (claimed under a lock before the VMs are listed); a VM destroyed, paused or hibernated
before its turn is ``skipped``, and during its update ``interrupted`` (the build was not
judged there: neither counts against it). Once at least one VM runs the build healthy and none
of the others refused it or went back from it, the bundle is written into the node's images
(their restore templates rebuilt in the background, ``hearth.control.templates``) and the warm
pool's VMs are replaced, so new VMs carry it too; a build no VM ran is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from hearth.agent_answers import guest_text
from hearth.agent_bundle import AgentBundle
from hearth.agent_client import AgentClient
from hearth.auth.states import TERMINAL, AuthStatus
from hearth.config import Settings
from hearth.control.execs import ExecService
from hearth.control.heartbeat import Heartbeat
from hearth.control.vms import VmService
from hearth.errors import Conflict, HearthError, NotFound
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.runs.states import RunStatus
from hearth.store import VmRecord
from hearth.vm.types import VmState
from hearth_agent.update import DEADLINE_HEADER, SHA256_HEADER, VERSION_HEADER

_log = get_logger("control.agent_updates")
# Beyond the VM's own deadline: the old agent's exit, init's restart delay and a slow start.
RESTART_GRACE_S = 30.0
PROBE_EVERY_S = 0.25
_RUNNING = (RunStatus.STARTING, RunStatus.RUNNING)
# ``skipped``: a rollout's VM that was gone (destroyed) or no longer ready (paused, hibernated,
# stopping) when its turn came; ``interrupted``: a VM ended so during its update, before the
# build was judged there. Neither tried the build to its end, so neither keeps it from the
# images, and neither vouches for it.
Outcome = Literal["updated", "rolled_back", "current", "failed", "skipped", "interrupted"]
_NOT_TAKEN = ("rolled_back", "failed")
# Runs the build healthy: updated now, or (``current``) since an update or a boot before its turn.
_TAKEN = ("updated", "current")
# What a VM's row shows once its owner, its lifetime or an idle rule ended it, or is ending it
# (no longer a ready VM whose agent can be judged), and what ended it. A VM that failed (its VMM
# died) is not here: that may be the build's doing.
_ENDED = {
    VmState.PAUSED: "paused",
    VmState.HIBERNATING: "hibernated",
    VmState.HIBERNATED: "hibernated",
    VmState.BOOTING: "hibernated",  # and woken again since
    VmState.STOPPING: "destroyed",
    VmState.DESTROYED: "destroyed",
}


@dataclass
class UpdateResult:
    """How one VM's update ended (``current``: it already ran the bundle's version)."""

    vm_id: str
    status: Outcome
    from_version: str | None
    to_version: str
    started_at: datetime
    ended_at: datetime
    error: str | None = None


@dataclass
class Rollout:
    """A rollout: its VMs, each one's result once it has one, and the most updated at once."""

    id: str
    version: str
    max_unavailable: int
    force: bool
    vm_ids: list[str]
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    results: dict[str, UpdateResult] = field(default_factory=dict)
    updating: set[str] = field(default_factory=set)
    max_concurrent: int = 0
    # Once every VM runs the bundle: the images written with it (their templates then
    # rebuilt), the pooled VMs replaced, or why the images were left as they were.
    images_changed: list[str] = field(default_factory=list)
    pool_recycled: int = 0
    images_error: str | None = None

    @property
    def running(self) -> bool:
        """Whether VMs are still to be updated."""
        return self.ended_at is None


class AgentUpdates:
    """Pushes ``bundle`` into VMs' agents and keeps the last rollout."""

    def __init__(
        self,
        *,
        vms: VmService,
        heartbeat: Heartbeat,
        settings: Settings,
        bundle: AgentBundle,
        on_images_changed: Callable[[], None] | None = None,
        execs: ExecService | None = None,
    ) -> None:
        self.vms = vms
        # Held while a VM's agent is replaced, so that nothing new starts in it meanwhile.
        self.execs = execs
        self.on_images_changed = on_images_changed
        self.heartbeat = heartbeat
        self.store = vms.store
        self.bundle = bundle
        self.deadline_s = settings.agent_update_deadline_s
        self.rollout: Rollout | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()  # a rollout's check-and-claim spans an await
        self._in_progress: set[str] = set()

    # ---- one VM ----------------------------------------------------------------------------

    async def update(
        self, vm_id: str, *, user_id: str | None = None, force: bool = False
    ) -> UpdateResult:
        """Update VM ``vm_id``'s agent to the bundle's version; how it ended."""
        record = await self.vms.get(vm_id, user_id=user_id)
        if record.status is not VmState.READY:
            raise Conflict(
                f"VM {vm_id} is {record.status.value}; only a ready VM's agent can be updated"
            )
        return await self._update_ready(record, force=force)

    async def _update_ready(self, record: VmRecord, *, force: bool) -> UpdateResult:
        """``update`` of a VM found ready just now (no await since)."""
        vm_id = record.id
        if vm_id in self._in_progress:
            raise Conflict(f"VM {vm_id}'s agent is being updated already")
        # Claimed before the next await; and held first, so that a run either is in the store
        # when ``_refuse_if_busy`` looks, or is refused when it starts its CLI.
        self._in_progress.add(vm_id)
        try:
            with self._holding(vm_id):
                if not force:
                    await self._refuse_if_busy(record)
                started = datetime.now(UTC)
                if record.agent_version == self.bundle.version:
                    return UpdateResult(
                        vm_id,
                        "current",
                        record.agent_version,
                        self.bundle.version,
                        started,
                        started,
                    )
                with self.heartbeat.held(vm_id):
                    return await self._update(record, started)
        finally:
            self._in_progress.discard(vm_id)

    def _holding(self, vm_id: str) -> contextlib.AbstractContextManager[None]:
        """Nothing new starts in the VM while its agent is replaced (without an ExecService,
        nothing is held)."""
        if self.execs is None:
            return contextlib.nullcontext()
        return self.execs.hold(
            vm_id,
            f"VM {vm_id}'s agent is being updated to version {self.bundle.version}; start it "
            "again when the update has ended",
        )

    async def _refuse_if_busy(self, record: VmRecord) -> None:
        runs = [
            run for run in await self.store.runs.list_for_vm(record.id) if run.status in _RUNNING
        ]
        if runs:
            raise Conflict(
                f"VM {record.id} has a run in progress ({runs[0].id}); update it when the run "
                "ends, or with force"
            )
        active = [status for status in AuthStatus if status not in TERMINAL]
        for session in await self.store.auth_sessions.list(statuses=active):
            if record.id in (session.vm_id, session.browser_vm_id):
                raise Conflict(
                    f"VM {record.id} serves a login in progress ({session.id}); update it when "
                    "the login ends, or with force"
                )

    async def _update(self, record: VmRecord, started: datetime) -> UpdateResult:
        vm = self.vms.live_vm(record.id)
        old, new = record.agent_version, self.bundle.version
        agent = AgentClient(str(vm.agent_url), self.vms.agent_token(record.id), vm_id=record.id)
        _log.info(
            "agent_update_started",
            vm_id=record.id,
            agent_url=agent.url,  # for the log only: clients get errors naming the VM
            from_version=old,
            to_version=new,
        )
        outcome: tuple[Outcome, str] | None  # None: updated
        try:
            await agent.update_agent(
                self.bundle.data,
                headers={
                    VERSION_HEADER: new,
                    SHA256_HEADER: self.bundle.sha256,
                    DEADLINE_HEADER: f"{self.deadline_s:g}",
                },
                timeout_s=60.0,
            )
        except HearthError as exc:
            refused = f"the agent refused the update: {exc.message}"
            outcome = await self._unjudged(record.id, "failed", refused)
        else:
            outcome = await self._wait_for(record.id, old, new, agent)
        ended = datetime.now(UTC)
        if outcome is None:
            updated = await self.store.vms.update(record.id, agent_version=new)
            _log.info("agent_updated", vm_id=record.id, from_version=old, to_version=new)
            await self.vms.announce(
                EventType.AGENT_UPDATED, updated, fromVersion=old, toVersion=new
            )
            return UpdateResult(record.id, "updated", old, new, started, ended)
        # What the guest said (its refusal, its reason, its version), cut: an event keeps it.
        status, error = outcome[0], guest_text(outcome[1])
        if status == "interrupted":
            # Its owner (or its lifetime) ended the VM: nothing to tell about the build.
            _log.info(
                "agent_update_interrupted", vm_id=record.id, to_version=new, error=error[:300]
            )
            return UpdateResult(record.id, status, old, new, started, ended, error)
        _log.warning("agent_update_failed", vm_id=record.id, to_version=new, error=error[:300])
        await self.vms.announce(
            EventType.AGENT_UPDATE_FAILED, record, fromVersion=old, toVersion=new, error=error
        )
        return UpdateResult(record.id, status, old, new, started, ended, error)

    async def _wait_for(
        self, vm_id: str, old: str | None, new: str, agent: AgentClient
    ) -> tuple[Outcome, str] | None:
        """None once ``new`` answers and the VM's guard has called the update good;
        ``rolled_back`` and the reason once ``old`` answers again past the VM's own deadline
        (its guard put it back), or once nothing answered in time; ``interrupted`` when the
        VM was ended meanwhile (``_unjudged``)."""
        began = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - began < self.deadline_s + RESTART_GRACE_S:
            vm = self.vms.live.get(vm_id)
            if vm is None:
                stopped = "the VM stopped during the update"
                return await self._unjudged(vm_id, "rolled_back", stopped)
            try:
                version = await self.vms.node.probe_agent(vm, timeout_s=2.0)
            except HearthError as exc:
                last = exc.message
            else:
                if version == new and await self._verdict(agent) is True:
                    return None
                last = f"the agent answers version {version}"
                if version == old and time.monotonic() - began > self.deadline_s:
                    return "rolled_back", await self._reason(agent, last)
            await asyncio.sleep(PROBE_EVERY_S)
        late = f"version {new} did not answer within {self.deadline_s + RESTART_GRACE_S:g} s"
        return await self._unjudged(vm_id, "rolled_back", f"{late}: {last}")

    async def _unjudged(self, vm_id: str, status: Outcome, error: str) -> tuple[Outcome, str]:
        """``status`` and ``error`` for an update whose push or wait went wrong, unless the VM
        was ended under it (destroyed, paused, hibernated: ``_ENDED``), which explains that
        better than the build does: then ``interrupted``, which does not count against it."""
        try:
            record = await self.store.vms.get(vm_id)
        except NotFound:
            return "interrupted", f"the VM is gone, so the update was not judged ({error})"
        ended = _ENDED.get(record.status)
        if ended is None:
            return status, error
        judged = f"the VM was {ended} during its update, so the build was not judged there"
        return "interrupted", f"{judged} ({error})"

    async def _verdict(self, agent: AgentClient) -> bool | None:
        """The VM guard's verdict on the update: True, False, or None while it watches."""
        try:
            update = (await agent.version()).get("update")
        except HearthError:
            return None
        ok = update.get("ok") if isinstance(update, dict) else None
        return ok if isinstance(ok, bool) else None

    async def _reason(self, agent: AgentClient, fallback: str) -> str:
        """Why the VM's guard went back, as it recorded it."""
        try:
            update = (await agent.version()).get("update") or {}
        except HearthError:
            return fallback
        error = update.get("error") if isinstance(update, dict) else None
        return f"rolled back in the VM: {error}" if error else fallback

    # ---- rollouts --------------------------------------------------------------------------

    async def start_rollout(self, *, max_unavailable: int, force: bool) -> Rollout:
        """Start updating every ready VM whose agent differs from the bundle (409 while a
        rollout runs); the rollout, followed with ``rollout``."""
        async with self._starting:
            if self.rollout is not None and self.rollout.running:
                raise Conflict(f"rollout {self.rollout.id} is still running")
            targets = [
                record.id
                for record in await self.vms.list_vms()
                if record.status is VmState.READY and record.agent_version != self.bundle.version
            ]
            rollout = Rollout(
                id=f"ro-{uuid.uuid4().hex[:12]}",
                version=self.bundle.version,
                max_unavailable=max_unavailable,
                force=force,
                vm_ids=targets,
            )
            self.rollout = rollout
            self._task = asyncio.create_task(self._roll(rollout))
        _log.info("agent_rollout_started", rollout_id=rollout.id, vms=len(targets))
        return rollout

    async def _roll(self, rollout: Rollout) -> None:
        slots = asyncio.Semaphore(rollout.max_unavailable)

        async def one(vm_id: str) -> None:
            async with slots:
                rollout.updating.add(vm_id)
                rollout.max_concurrent = max(rollout.max_concurrent, len(rollout.updating))
                started = datetime.now(UTC)
                try:
                    rollout.results[vm_id] = await self._roll_one(vm_id, rollout, started)
                except HearthError as exc:
                    ended = datetime.now(UTC)
                    rollout.results[vm_id] = UpdateResult(
                        vm_id, "failed", None, rollout.version, started, ended, exc.message
                    )
                finally:
                    rollout.updating.discard(vm_id)

        try:
            await asyncio.gather(*(one(vm_id) for vm_id in rollout.vm_ids))
            await self._carry_into_images(rollout)
        finally:
            rollout.ended_at = datetime.now(UTC)
            _log.info(
                "agent_rollout_ended", rollout_id=rollout.id, max_concurrent=rollout.max_concurrent
            )

    async def _roll_one(self, vm_id: str, rollout: Rollout, started: datetime) -> UpdateResult:
        """Update one of the rollout's VMs, or skip it when it is gone or no longer ready: its
        owner destroyed, paused or hibernated it (or its lifetime did) since the rollout began."""
        try:
            record = await self.vms.get(vm_id)
        except NotFound as exc:
            return self._skipped(vm_id, None, rollout, started, f"the VM is gone: {exc.message}")
        if record.status is not VmState.READY:
            reason = f"the VM was {record.status.value}, no longer ready, when its turn came"
            return self._skipped(vm_id, record.agent_version, rollout, started, reason)
        return await self._update_ready(record, force=rollout.force)

    def _skipped(
        self, vm_id: str, version: str | None, rollout: Rollout, started: datetime, reason: str
    ) -> UpdateResult:
        _log.info("agent_rollout_vm_skipped", rollout_id=rollout.id, vm_id=vm_id, reason=reason)
        ended = datetime.now(UTC)
        return UpdateResult(vm_id, "skipped", version, rollout.version, started, ended, reason)

    async def _carry_into_images(self, rollout: Rollout) -> None:
        """Every VM that tried the bundle took it: write it into the node's images too, so that
        new VMs (from templates rebuilt on them) carry it, and replace the pooled VMs, which run
        the old one. A rollout with a VM that did not take it (rolled back, or refused) leaves
        the images alone; a VM skipped or interrupted (ended before or during its update) does
        not count either way, and a rollout in which no VM ran the bundle healthy leaves the
        images alone too: nothing vouches for it (``hearth image install-agent`` installs it
        regardless)."""
        results = rollout.results.values()
        failed = [r.vm_id for r in results if r.status in _NOT_TAKEN]
        if failed:
            rollout.images_error = f"{len(failed)} VM(s) did not take version {rollout.version}"
            _log.warning("agent_rollout_images_left", rollout_id=rollout.id, failed=failed)
            return
        if not any(r.status in _TAKEN for r in results):
            unjudged = [r.vm_id for r in results]
            why = f"{len(unjudged)} skipped or interrupted" if unjudged else "none to update"
            rollout.images_error = (
                f"no VM ran version {rollout.version} healthy ({why}), so it was not installed "
                "into the images; `hearth image install-agent IMAGE` installs it regardless"
            )
            _log.warning("agent_rollout_images_untested", rollout_id=rollout.id, vms=unjudged)
            return
        try:
            rollout.images_changed = await self.vms.node.install_agent(self.bundle)
        except HearthError as exc:
            rollout.images_error = exc.message
            _log.error("agent_rollout_images_failed", rollout_id=rollout.id, error=exc.message)
            return
        if rollout.images_changed:
            if self.on_images_changed is not None:
                self.on_images_changed()  # their templates, rebuilt before anyone waits
            if self.vms.pool is not None:
                rollout.pool_recycled = await self.vms.pool.recycle()
        _log.info(
            "agent_rollout_images_carried",
            rollout_id=rollout.id,
            images=rollout.images_changed,
            pool_recycled=rollout.pool_recycled,
        )

    async def shutdown(self) -> None:
        """Stop a running rollout (VMs being updated finish in the VM, guarded there)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
