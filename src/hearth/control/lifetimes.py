"""Lifetimes of users' CLI VMs: ``timeoutS`` (running time), ``idleTimeoutS`` (time unused),
what each does when it ends, and ``autoResume``.

A VM's running time is kept in its row, so it survives a controller restart: the seconds used
before ``running_since``, plus the stretch since. Leaving the running statuses (a pause, a
hibernation, a destroy, a failure) adds that stretch and clears ``running_since``; paused or
hibernated time does not use up the lifetime, and an ended VM's stays as it was. Use is kept in
memory: every API call naming the VM (the API's middleware), every command, run, terminal or
file call (``ExecService.runnable``), a login still under way for the VM's user that delivers
into it, and a command the controller started that still runs (its agent is asked before an
idle VM is acted on; one that does not answer keeps it in use: a VM whose agent never answers
again is failed by its heartbeats). A restarted controller counts idleness from its own start.
Browser VMs serve one login and end with it: lifetimes are for CLI VMs.

Command ids are the guest's own, and its agent may say they all run: at most ``KEEP_COMMANDS``
are kept per VM (the oldest go first, logged), and one look at a VM's commands asks its agent
for at most ``ASK_DEADLINE_S`` in all (an unfinished look counts them as running).

Every ``HEARTH_LIFETIME_CHECK_INTERVAL_S`` the VMs whose time is up get their action: ``pause``,
``hibernate`` or ``destroy`` (the last two pull the delivered credentials back first, as a
manual destroy does; where the VMM cannot hibernate, hibernate destroys instead); each is told
as ``vm.timed_out`` and logged with the VM's id. An unhealthy VM can only be destroyed: pause
and hibernate wait until its heartbeats make it ready again (or fail it). Each VM's look (its
agent asked about its commands) and action run in a task of their own, one at a time per VM
(``VmChores``): what one VM's agent or VMM takes (an answer comes within 10 s, a save takes
what it takes) holds up no other VM's lifetime. With ``autoResume`` (the default) a call that
needs a paused or hibernated VM running resumes it first, told as ``vm.auto_resumed``; one
being hibernated is woken once its save ends. A call that meets a wake under way waits for it
(``WAKE_WAIT_S``) rather than being refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Collection, Iterator, MutableSet
from datetime import datetime
from typing import TYPE_CHECKING

from hearth.agent_client import AgentClient
from hearth.auth.states import TERMINAL, AuthStatus
from hearth.config import Settings
from hearth.control.vm_chores import VmChores
from hearth.errors import Conflict, HearthError, InvalidInput, NotFound, NotSupported
from hearth.events.types import EventType
from hearth.logging import get_logger
from hearth.periodic import STEP_GRACE_S, every
from hearth.shared_tasks import SharedTasks
from hearth.store import Store, VmRecord
from hearth.store.records import utc_now
from hearth.vm.readiness import RESTORE_DEADLINE_S, Backoff, Deadline
from hearth.vm.types import BootMode, LifetimeAction, VmState, VmType

if TYPE_CHECKING:
    from hearth.control.vms import VmService
    from hearth.node.interface import Node

_log = get_logger("control.lifetimes")
# The statuses a VM uses its lifetime in.
_RUNNING = (VmState.READY, VmState.UNHEALTHY)
# Not running now but to run again (a wake's boot among them): what was started in them is kept.
_ASLEEP = (VmState.PAUSED, VmState.HIBERNATING, VmState.HIBERNATED, VmState.BOOTING)
# Commands kept per VM before the ended ones are looked for: with no idle timeout nothing else
# asks, and a VM running command after command would keep every id.
PRUNE_COMMANDS_AT = 64
# The most command ids kept per VM, past which the oldest are forgotten: above the most a VM
# may run at once (HEARTH_EXEC_MAX_PER_VM, at most 1000), so only a guest whose agent says
# commands run that do not (ids it chose) loses any, and memory does not grow with its answers.
KEEP_COMMANDS = 1024
# How long one look at a VM's commands asks its agent, all asks together.
ASK_DEADLINE_S = 30.0
# The most VMs whose action (pause, hibernation, destroy) runs at once: many VMs due together (a
# batch made at once, a controller back after downtime) take turns, as pull-back rounds do.
ENDS_AT_ONCE = 8
# How often ``move_banking_time`` reads a row again that moved on between its read and write.
_MOVE_RACES = 5
# How often ``Lifetimes.change`` reads a lifetime again that another change set meanwhile.
_CHANGE_RACES = 8
# A login in one of these may still deliver into its CLI VM.
_LOGGING_IN = tuple(status for status in AuthStatus if status not in TERMINAL)
# How long a call waits for a wake it did not start: the woken agent has RESTORE_DEADLINE_S to
# answer, and the wake's admission and the guest clock's setting come on top.
WAKE_WAIT_S = 2 * RESTORE_DEADLINE_S
_WAKE_POLL = Backoff(initial_s=0.05, cap_s=1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lifetime:
    """A VM's limits (None: none) and what each does when it is reached."""

    timeout_s: int | None = None
    timeout_action: LifetimeAction = LifetimeAction.DESTROY
    idle_timeout_s: int | None = None
    idle_action: LifetimeAction = LifetimeAction.PAUSE
    auto_resume: bool = True

    @classmethod
    def defaults(cls, settings: Settings) -> Lifetime:
        """What a CLI VM gets when its create says nothing (``HEARTH_VM_*``; 0 is none)."""
        return cls(
            timeout_s=settings.vm_timeout_s or None,
            timeout_action=LifetimeAction(settings.vm_timeout_action),
            idle_timeout_s=settings.vm_idle_timeout_s or None,
            idle_action=LifetimeAction(settings.vm_idle_action),
        )

    @classmethod
    def of(cls, record: VmRecord) -> Lifetime:
        """The lifetime ``record`` holds."""
        return cls(**{f.name: getattr(record, f.name) for f in dataclasses.fields(cls)})

    def fields(self) -> dict[str, object]:
        """The row fields that hold it."""
        return dataclasses.asdict(self)

    def check_carried_out_by(self, node: Node) -> None:
        """InvalidInput naming the field whose action ``node``'s VMM cannot carry out (a
        hibernate where it cannot hibernate): such a lifetime would never end."""
        if node.can_hibernate:
            return
        for name, action in (
            ("timeoutAction", self.timeout_action),
            ("idleAction", self.idle_action),
        ):
            if action is LifetimeAction.HIBERNATE:
                raise InvalidInput(
                    f"{name}: this host's VMM ({node.vmm}) cannot hibernate VMs; "
                    "choose pause or destroy"
                )


def _has_lifetime(record: VmRecord) -> bool:
    """Whether ``record`` is a running, user-held CLI VM: one its lifetime applies to now."""
    return record.status in _RUNNING and not record.pooled and record.vm_type is VmType.CLI


def used_s(record: VmRecord, now: datetime) -> float:
    """The running seconds ``record`` has used of its lifetime by ``now``."""
    since = record.running_since
    return record.lifetime_used_s + (max(0.0, (now - since).total_seconds()) if since else 0.0)


def running_fields(record: VmRecord, new: VmState, now: datetime) -> dict[str, object]:
    """The running-time fields of ``record`` moving to ``new`` at ``now``: leaving the running
    statuses (a pause, a hibernation, a teardown, a failure) banks the stretch since it started
    running, so a VM that stops uses no more of its lifetime; resuming starts a new stretch."""
    if new not in _RUNNING and record.running_since is not None:
        return {"lifetime_used_s": used_s(record, now), "running_since": None}
    if new in _RUNNING and record.running_since is None:
        return {"running_since": now}
    return {}


async def move_banking_time(
    store: Store, vm_id: str, expected: Collection[VmState], new: VmState, **fields: object
) -> VmRecord:
    """Move VM ``vm_id`` from one of ``expected`` to ``new`` with ``fields`` and its running-time
    fields (``running_fields``), by compare-and-set on the very status it was read in, so the
    time banked is that of the row moved; read again when it moved on meanwhile among
    ``expected``. Conflict (naming its status) once it is in none of them."""
    attempt = 0
    while True:
        record = await store.vms.get(vm_id)
        read = (record.status,) if record.status in expected else tuple(expected)
        times = running_fields(record, new, utc_now())
        try:
            return await store.vms.transition(vm_id, read, new, **fields, **times)
        except Conflict:
            attempt += 1
            if record.status not in expected or attempt == _MOVE_RACES:
                raise


@dataclasses.dataclass(frozen=True)
class _Due:
    reason: str  # "lifetime" | "idle"
    action: LifetimeAction
    limit_s: int


class _ExecIds(MutableSet[str]):
    """Command ids in the order they were followed (a set to its readers)."""

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}

    def __contains__(self, exec_id: object) -> bool:
        return exec_id in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, exec_id: str) -> None:
        self._ids[exec_id] = None

    def discard(self, exec_id: str) -> None:
        self._ids.pop(exec_id, None)


class Lifetimes:
    """Keeps track of use, acts on VMs whose time is up, and resumes paused ones on demand."""

    def __init__(self, *, vms: VmService, settings: Settings) -> None:
        self.vms = vms
        self.interval_s = settings.lifetime_check_interval_s
        self._started = utc_now()
        self._seen: dict[str, datetime] = {}
        # Commands the controller started in each VM and has not yet seen end.
        self._execs: dict[str, _ExecIds] = {}
        self._chores = VmChores(at_once={"end": ENDS_AT_ONCE})
        # Automatic resumes under way: concurrent calls on one VM share one.
        self._resuming: SharedTasks[VmRecord] = SharedTasks()

    def touch(self, vm_id: str) -> None:
        """VM ``vm_id`` was used now (ids of VMs this controller does not run are ignored)."""
        if vm_id in self.vms.live:
            self._seen[vm_id] = utc_now()

    def started_exec(self, vm_id: str, exec_id: str) -> None:
        """A command started (or followed by a client) in VM ``vm_id``: use now, and the VM is
        not idle while it runs."""
        self.touch(vm_id)
        self.follows_exec(vm_id, exec_id)

    def follows_exec(self, vm_id: str, exec_id: str) -> None:
        """The controller follows a command in VM ``vm_id`` on its own (a run after a restart):
        not use in itself, but the VM is not idle while the command runs. Past
        ``KEEP_COMMANDS`` the oldest is forgotten."""
        pending = self._execs.setdefault(vm_id, _ExecIds())
        pending.add(exec_id)
        if len(pending) > KEEP_COMMANDS:
            pending.discard(next(iter(pending)))
            _log.warning("vm_commands_forgotten", vm_id=vm_id, kept=KEEP_COMMANDS, forgotten=1)

    async def ensure_running(self, record: VmRecord) -> VmRecord:
        """``record`` used now; resumed first when it is paused or hibernated (or being
        hibernated: once the save ends) and resumes automatically; once awake when a wake of it
        is under way. The row as it is then (its status may still not be ready)."""
        self.touch(record.id)
        # An automatic resume under way is joined, whatever the row reads meanwhile ("booting").
        if not self._resuming.running(record.id):
            record = await self._settled(record)
            asleep = record.status in (VmState.PAUSED, VmState.HIBERNATED)
            if not (asleep and record.auto_resume):
                return record
        return await self._resuming.join(record.id, lambda: self._auto_resume(record))

    async def _settled(self, record: VmRecord) -> VmRecord:
        """``record`` once what moves it on its own has ended: a hibernation under way (only
        with autoResume: the VM is woken after it), then a wake under way (for at most
        ``WAKE_WAIT_S``)."""
        if record.status is VmState.HIBERNATING and record.auto_resume:
            record = await self.vms.hibernation.settled(record.id)
        deadline, delays = Deadline.after(WAKE_WAIT_S), _WAKE_POLL.delays()
        while (
            record.status is VmState.BOOTING
            and record.boot_mode is BootMode.WAKE
            and not deadline.expired
        ):
            await asyncio.sleep(min(next(delays), deadline.remaining()))
            record = await self.vms.store.vms.get(record.id)
        return record

    async def _auto_resume(self, record: VmRecord) -> VmRecord:
        try:
            resumed = await self.vms.resume(record.id)
        except Conflict:
            return await self.vms.get(record.id)  # resumed (or ended) by someone else meanwhile
        _log.info("vm_auto_resumed", vm_id=record.id, user_id=record.user_id)
        await self.vms.announce(EventType.VM_AUTO_RESUMED, resumed)
        self.touch(record.id)
        return resumed

    async def change(
        self, vm_id: str, user_id: str | None, edit: Callable[[Lifetime], Lifetime]
    ) -> VmRecord:
        """Set a CLI VM's lifetime to ``edit`` of its current one (``PATCH /api/vms/{id}``);
        Conflict for a Browser VM or one that has ended.

        Written by compare-and-set on the lifetime it was read with: when another change landed
        meanwhile, the row is read again and ``edit`` applied to what it holds then, so two
        changes of different fields at once both stick. Conflict after ``_CHANGE_RACES``
        changes in a row beat this one."""
        for _ in range(_CHANGE_RACES):
            record = await self.vms.get(vm_id, user_id=user_id)
            if record.vm_type is not VmType.CLI:
                raise Conflict(
                    f"VM {vm_id} is a {record.vm_type.value} VM; lifetimes are for CLI VMs"
                )
            if not record.is_active:
                raise Conflict(f"VM {vm_id} is {record.status.value}; its lifetime is over")
            current = Lifetime.of(record)
            lifetime = edit(current)
            lifetime.check_carried_out_by(self.vms.node)
            self.touch(vm_id)
            updated = await self.vms.store.vms.update_if(
                vm_id, current.fields(), **lifetime.fields()
            )
            if updated is not None:
                _log.info(
                    "vm_lifetime_changed",
                    vm_id=vm_id,
                    **{k: str(v) for k, v in lifetime.fields().items()},
                )
                return updated
        raise Conflict(f"VM {vm_id}: its lifetime kept changing meanwhile; try again")

    async def run(self) -> None:
        """Run ``check_once`` forever (cancel to stop: the looks and actions under way get
        ``STEP_GRACE_S`` to end)."""
        try:
            await every(self.interval_s, self.check_once, what="VM lifetimes")
        finally:
            await self._chores.stop(STEP_GRACE_S)

    async def check_once(self) -> list[str]:
        """Start acting on every running CLI VM whose lifetime or idle time is up, and looking
        for the ended ones among the commands of each that keeps more than
        ``PRUNE_COMMANDS_AT``, each in a task of its own; the ids of the VMs whose action this
        started (one still under way from an earlier round is not started again)."""
        rows = await self.vms.store.vms.list(statuses=(*_RUNNING, *_ASLEEP))
        self._forget_gone({record.id for record in rows})
        started = []
        for record in rows:
            if not _has_lifetime(record):
                continue
            vm_id = record.id
            if (
                record.status is VmState.READY
                and len(self._execs.get(vm_id, ())) > PRUNE_COMMANDS_AT
            ):
                prune = functools.partial(self._runs_command, vm_id, every=True)
                self._chores.start(vm_id, "prune", prune)
            if next(self._due(record, utc_now()), None) is None:
                continue
            if self._chores.start(vm_id, "end", functools.partial(self._end, vm_id)):
                started.append(vm_id)
        return started

    async def _end(self, vm_id: str) -> bool:
        """Act on VM ``vm_id`` if its time is up, read again (an action of an earlier round may
        have ended since the round's read); whether it did."""
        record = await self.vms.store.vms.get(vm_id)
        now = utc_now()
        due = next(self._due(record, now), None) if _has_lifetime(record) else None
        if due is None or (due.reason == "idle" and await self._busy(record)):
            return False
        return await self._act(record, due, decided=now)

    def _due(self, record: VmRecord, now: datetime) -> Iterator[_Due]:
        """What is due for ``record`` at ``now``, its lifetime's action first. An unhealthy VM
        can only be destroyed (pause needs it ready, hibernate ready or paused): its other
        actions wait until its heartbeats make it ready again or fail it."""
        for due in self._limits_reached(record, now):
            if record.status is VmState.READY or due.action is LifetimeAction.DESTROY:
                yield due

    def _limits_reached(self, record: VmRecord, now: datetime) -> Iterator[_Due]:
        if record.timeout_s is not None and used_s(record, now) >= record.timeout_s:
            yield _Due("lifetime", record.timeout_action, record.timeout_s)
        if record.idle_timeout_s is None:
            return
        last = max(self._seen.get(record.id, self._started), record.running_since or self._started)
        if (now - last).total_seconds() >= record.idle_timeout_s:
            yield _Due("idle", record.idle_action, record.idle_timeout_s)

    async def _busy(self, record: VmRecord) -> bool:
        """Whether a login delivers into the VM of ``record`` or a command the controller
        started in it still runs (both count as use)."""
        vm_id = record.id
        logins = await self.vms.store.auth_sessions.list(
            user_id=record.user_id, statuses=_LOGGING_IN
        )
        if any(login.vm_id == vm_id for login in logins):
            self.touch(vm_id)
            return True
        if await self._runs_command(vm_id):
            self.touch(vm_id)
            return True
        return False

    async def _runs_command(self, vm_id: str, *, every: bool = False) -> bool:
        """Whether a command the controller started in VM ``vm_id`` may still run; the ones the
        agent says ended, or knows not, are forgotten on the way (with ``every``, all of them).
        An agent that does not answer (slow under TCG, stalled), or not all within
        ``ASK_DEADLINE_S``, ends the look, forgetting nothing more, and counts as running: only
        its answer says a command ended. One that never answers again keeps the VM no longer
        than its heartbeats, which fail the VM."""
        pending = self._execs.get(vm_id, _ExecIds())
        if not pending or vm_id not in self.vms.live:
            return False
        vm = self.vms.live_vm(vm_id)
        agent = AgentClient(str(vm.agent_url), self.vms.agent_token(vm_id), vm_id=vm_id)
        running = False
        try:
            async with asyncio.timeout(ASK_DEADLINE_S):
                for exec_id in list(pending):
                    try:
                        state = (await agent.exec_status(exec_id)).get("status")
                    except NotFound:
                        state = None  # unknown to the agent (restarted, or long gone)
                    if state != "running":
                        pending.discard(exec_id)
                    elif not every:
                        return True
                    else:
                        running = True
        except (HearthError, TimeoutError):
            return True
        return running

    async def _act(self, record: VmRecord, due: _Due, *, decided: datetime) -> bool:
        if due.reason == "idle" and self._seen.get(record.id, decided) > decided:
            return False  # used while the check looked at its logins and commands
        done = due.action
        try:
            if due.action is LifetimeAction.PAUSE:
                ended = await self.vms.pause(record.id)
                if due.reason == "idle" and self._seen.get(record.id, decided) > decided:
                    # Used while it was being paused (a command saw it running just before):
                    # it runs on, and the command's request, held for that moment, goes on.
                    await self.vms.resume(record.id)
                    _log.info("vm_idle_pause_undone", vm_id=record.id)
                    return False
            elif due.action is LifetimeAction.HIBERNATE:
                ended, done = await self._hibernate(record.id)
            else:
                ended = await self.vms.destroy(record.id, user_id=None)
        except HearthError as exc:
            _log.warning(
                "vm_timeout_action_failed", vm_id=record.id, error=exc.message[:300], **due.__dict__
            )
            return False
        _log.info(
            "vm_timed_out",
            vm_id=record.id,
            user_id=record.user_id,
            reason=due.reason,
            action=done.value,
        )
        # ``insteadOf``: the action the lifetime asked for, when it could not be carried out.
        instead = {} if done is due.action else {"insteadOf": due.action.value}
        await self.vms.announce(
            EventType.VM_TIMED_OUT,
            ended,
            reason=due.reason,
            action=done.value,
            limitS=due.limit_s,
            **instead,
        )
        return True

    async def _hibernate(self, vm_id: str) -> tuple[VmRecord, LifetimeAction]:
        """Hibernate the VM, or destroy it where its VMM cannot hibernate (a lifetime set before
        such ones were refused): the action is there to free the host, and trying it again every
        round would never end. The VM's record and the action taken."""
        try:
            return await self.vms.hibernation.hibernate(vm_id), LifetimeAction.HIBERNATE
        except NotSupported as exc:
            _log.warning(
                "vm_timeout_hibernate_not_supported",
                vm_id=vm_id,
                error=exc.message[:300],
                instead="destroy",
            )
        return await self.vms.destroy(vm_id, user_id=None), LifetimeAction.DESTROY

    def _forget_gone(self, keep: set[str]) -> None:
        """Forget the use and commands of every VM but ``keep`` and the live ones: those that
        ended (a hibernated VM's commands run on once it wakes)."""
        keep = keep | set(self.vms.live)
        for table in (self._seen, self._execs):
            for vm_id in set(table) - keep:
                table.pop(vm_id, None)
