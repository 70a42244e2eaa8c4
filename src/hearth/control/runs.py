"""RunService: the vendor CLIs' own headless runs in users' CLI VMs, as one event schema.

A run is ``claude -p`` / ``codex exec`` / ``gemini -p`` started as an exec under the VM's agent,
with the login the auth flow delivered into that VM (Hearth adds no API key). Its row and its
events (bounded) live in the store; a ``RunPump`` per run in progress reads the CLI's output and
maps it. The process lives under the agent, so a client that disconnects loses nothing and a
controller that restarts re-attaches to every run still in progress (``recover``).

A cancel is recorded on the run's row first, then carried out: SIGTERM, SIGKILL after a grace.
A cancel that cannot reach the CLI yet is carried out once it can: one that came while the CLI
started, once it has; one in a VM asleep whose autoResume is off (the cancel may not wake it),
once the VM runs again; one a restart interrupted, by the next controller (``recover``). A pump
that fails here (not in the VM) ends its run ``cli_crashed`` and then stops the CLI, rather
than leave it running with nobody reading it; a database outage is waited out, not a failure.

Lifecycle (``RunStatus``)::

    starting ──▶ running ──▶ completed
        │           └──────▶ failed {code}
        └──▶ (deleted: the CLI was refused before it started; the caller got the error)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from hearth.config import Settings
from hearth.control.execs import ExecRequest, ExecService, TimeLimit
from hearth.control.run_pump import RunPump, StoreOutage
from hearth.control.vms import VmService
from hearth.errors import BodyTooLarge, Conflict, EventsGone, HearthError, NotFound, NotLoggedIn
from hearth.logging import get_logger
from hearth.runs import RunEventType, run_command
from hearth.runs.states import RunStatus
from hearth.store import Store
from hearth.store.outage import is_outage
from hearth.store.records import RunEventRecord, RunRecord, VmRecord
from hearth_agent.wire import Provider

_log = get_logger("control.runs")

# A reader with nothing new wakes this often to look again (a missed wake-up costs no more).
READER_POLL_S = 5.0
# A cancelled CLI gets this long to stop on SIGTERM before its whole group is killed.
CANCEL_GRACE_S = 1.0
# The id of a run's first event (its ``run.started``); each later one is numbered on from the
# run's ``last_event_id`` (``RunPump``), so a reader from the start expects this id first.
FIRST_EVENT_ID = 1


@dataclass(frozen=True)
class RunRequest:
    """A run as the API received it (already validated)."""

    provider: Provider
    prompt: str
    cwd: str | None = None
    model: str | None = None
    resume: str | None = None
    timeout_s: float | None = None


def run_exec_request(request: RunRequest, *, timeout_s: float) -> ExecRequest:
    """What the VM's agent runs for ``request``: the CLI's headless command line, the prompt on
    its stdin, for ``timeout_s``. InvalidInput for a request the CLI cannot take (``run_command``).
    """
    command = run_command(
        request.provider, prompt=request.prompt, model=request.model, resume=request.resume
    )
    return ExecRequest(
        cmd=command.argv, env=command.env, cwd=request.cwd, stdin=command.stdin, timeout_s=timeout_s
    )


class RunService:
    """Starts runs, keeps their events, re-attaches after a restart, cancels them."""

    def __init__(
        self, *, settings: Settings, store: Store, vms: VmService, execs: ExecService
    ) -> None:
        self.settings = settings
        self.store = store
        self.vms = vms
        self.execs = execs
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._chores: set[asyncio.Task[None]] = set()

    # -- starting -------------------------------------------------------------------------------

    async def start(self, vm_id: str, user_id: str | None, request: RunRequest) -> RunRecord:
        """Start the provider's CLI on ``prompt``; the run, ``running``.

        Refused before anything starts: a prompt over the cap (413), a timeout past
        ``HEARTH_RUN_TIMEOUT_S`` (422), a VM the caller may not see (404) or that cannot run
        anything (409; also while its agent is being updated), a provider never delivered into
        it (409 ``not_logged_in``), the per-VM cap (429).
        """
        if len(request.prompt.encode("utf-8")) > self.settings.run_prompt_max_bytes:
            raise BodyTooLarge(
                f"the prompt is larger than {self.settings.run_prompt_max_bytes} bytes "
                "(HEARTH_RUN_PROMPT_MAX_BYTES)"
            )
        timeout_s = self.limit.timeout_for(request.timeout_s)
        record = await self.execs.runnable(vm_id, user_id)
        await self._require_login(record, request.provider)
        command = run_exec_request(request, timeout_s=timeout_s)
        run = await self.store.runs.insert(
            RunRecord(
                user_id=record.user_id,
                vm_id=vm_id,
                provider=request.provider,
                timeout_s=math.ceil(timeout_s),
                model=request.model,
                resume=request.resume,
            )
        )
        try:
            started = await self.execs.start(vm_id, user_id, command, limit=self.limit)
        except BaseException:
            await self.store.runs.discard_starting(run.id)
            raise
        run = await self.store.runs.transition(
            run.id, RunStatus.STARTING, RunStatus.RUNNING, exec_id=started["execId"]
        )
        if run.cancel_requested:
            await self._stop(run)  # cancelled while its CLI started, which had nothing to stop
        first = RunEventRecord(
            run_id=run.id,
            seq=FIRST_EVENT_ID,
            type=RunEventType.STARTED.value,
            data=json.dumps(
                {
                    "runId": run.id,
                    "provider": run.provider.value,
                    "model": run.model,
                    "resume": run.resume,
                }
            ),
        )
        await self.store.runs.append_events(run.id, [first], exec_cursor=0, keep=self._keep)
        run = await self.store.runs.get(run.id)
        _log.info(
            "run_started",
            run_id=run.id,
            vm_id=vm_id,
            provider=run.provider.value,
            exec_id=run.exec_id,
        )
        self._attach(run)
        return run

    @property
    def limit(self) -> TimeLimit:
        """How long a run may take: its default and its most."""
        return TimeLimit(self.settings.run_timeout_s, "HEARTH_RUN_TIMEOUT_S")

    async def _require_login(self, vm: VmRecord, provider: Provider) -> None:
        credential = await self.store.credentials.get(vm.user_id, provider.value)
        if credential is None or credential.delivered_to_vm_id != vm.id:
            raise NotLoggedIn(
                f"no {provider.value} login was delivered into VM {vm.id}; log in first "
                f'(POST /api/auth/start {{"provider": "{provider.value}"}}, or `hearth auth '
                f"login --provider {provider.value}`: the login lands in the user's CLI VM)"
            )

    @property
    def _keep(self) -> int:
        return self.settings.run_events_keep

    def _attach(self, run: RunRecord) -> None:
        """Start the pump of a running run (once)."""
        if run.id in self._pumps:
            return
        pump = RunPump(run, store=self.store, execs=self.execs, keep=self._keep, notify=self._wake)
        task = asyncio.create_task(self._pump(pump), name=f"run-{run.id}")
        self._pumps[run.id] = task

    async def _pump(self, pump: RunPump) -> None:
        try:
            await pump.run_to_end()
            if pump.cli_unread:  # ended for the agent's garbled output: nobody reads the CLI
                self._chore(self._signal_once_awake(pump.run, "SIGKILL"))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Hearth's own failure, not the CLI's: the run must not stay "running" with nobody
            # reading it (its readers waiting, agent updates refused), nor its CLI run on.
            _log.exception("run_pump_crashed", run_id=pump.run.id)
            await self._abandon(pump)
        finally:
            self._pumps.pop(pump.run.id, None)
            self._wake(pump.run.id)

    async def _abandon(self, pump: RunPump) -> None:
        """End the run ``cli_crashed``, then SIGKILL its CLI: only once that is stored, so
        the row never says ``running`` of a CLI that was killed. A database that cannot be
        reached is waited out (``STORE_BACKOFF``) until the write lands or the controller
        stops; a run that cannot be ended (the store refused it) is left running, CLI and all,
        for the next controller's ``recover`` to read on."""
        outage = StoreOutage(pump.run.id)
        while True:
            try:
                await pump.abandon(
                    "Hearth failed to read the CLI's output (an internal error, logged with the "
                    "run's id) and stopped the CLI"
                )
                break
            except Exception as exc:
                if not is_outage(exc):
                    _log.exception("run_abandon_failed", run_id=pump.run.id)
                    return
                await outage.wait(exc, doing="ending the run")
        self._chore(self._signal_once_awake(pump.run, "SIGKILL"))

    def _wake(self, run_id: str) -> None:
        wakeup = self._wakeups.pop(run_id, None)
        if wakeup is not None:
            wakeup.set()

    # -- reading --------------------------------------------------------------------------------

    async def get(self, vm_id: str, run_id: str, user_id: str | None) -> RunRecord:
        """The run ``run_id`` of VM ``vm_id``; NotFound unless the caller may see both."""
        await self.vms.get(vm_id, user_id=user_id)
        try:
            run = await self.store.runs.get(run_id)
        except NotFound:
            raise NotFound(f"run {run_id} does not exist") from None
        if run.vm_id != vm_id:
            raise NotFound(f"run {run_id} does not exist")
        return run

    async def list(self, vm_id: str, user_id: str | None) -> list[RunRecord]:
        """The VM's runs, newest first."""
        await self.vms.get(vm_id, user_id=user_id)
        return await self.store.runs.list_for_vm(vm_id)

    async def events(
        self, vm_id: str, run_id: str, user_id: str | None, *, after: int = 0
    ) -> AsyncIterator[RunEventRecord]:
        """The run's events after id ``after`` (0: all of them), as they come, ending with its
        last; EventsGone if the next one the reader needs is no longer kept, also when it reads
        from the start. Checked before the first is read (so a refusal is an error answer, not a
        broken stream)."""
        run = await self.get(vm_id, run_id, user_id)
        after = max(after, FIRST_EVENT_ID - 1)
        if after < run.last_event_id:
            first = await self.store.runs.first_event_id(run_id)
            if first is not None and first > after + 1:
                raise EventsGone(
                    f"run {run_id} keeps its events from id {first} on (the newest "
                    f"HEARTH_RUN_EVENTS_KEEP); {_ids(after + 1, first - 1)} no longer kept: "
                    f"Last-Event-ID {first - 1} reads what is"
                )
        return self._follow(run_id, after)

    async def _follow(self, run_id: str, after: int) -> AsyncIterator[RunEventRecord]:
        while True:
            wakeup = self._wakeups.setdefault(run_id, asyncio.Event())
            batch = await self.store.runs.events(run_id, after=after)
            for event in batch:
                if event.seq != after + 1:
                    # Fallen behind what is kept (also before a first read from the start):
                    # ended here, the reader's reconnect is told which events are gone (410)
                    # instead of reading on past the hole.
                    _log.warning("run_reader_behind", run_id=run_id, after=after, next=event.seq)
                    return
                yield event
                after = event.seq
            if batch:
                continue
            run = await self.store.runs.get(run_id)
            if run.is_terminal and after >= run.last_event_id:
                # Nothing wakes the readers of an ended run again: its wakeup would stay.
                self._wakeups.pop(run_id, None)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), READER_POLL_S)

    # -- cancelling -----------------------------------------------------------------------------

    async def cancel(self, vm_id: str, run_id: str, user_id: str | None) -> RunRecord:
        """Stop the run: SIGTERM to the CLI's whole process group, SIGKILL after a grace; the
        run ends ``failed {code: cancelled}``. An ended run is returned as it is."""
        run = await self.get(vm_id, run_id, user_id)
        if run.is_terminal:
            return run
        run = await self.store.runs.update(run_id, cancel_requested=True)
        if run.exec_id is not None:  # else ``start`` stops it once its CLI has started
            await self._stop(run)
        _log.info("run_cancel_requested", run_id=run_id, vm_id=vm_id)
        return run

    async def _stop(self, run: RunRecord) -> None:
        """SIGTERM to the run's CLI now, SIGKILL after the grace. The cancel is use of the VM:
        a sleeping one is resumed for it (autoResume); one whose autoResume is off is not, and
        its CLI is stopped once it runs again."""
        assert run.exec_id is not None
        try:
            await self.execs.kill(run.vm_id, None, run.exec_id, "SIGTERM")
        except Conflict as exc:
            if await self._asleep(run.vm_id):
                _log.info("run_cancel_deferred", run_id=run.id, vm_id=run.vm_id)
                self._chore(self._stop_once_awake(run))
                return
            _log.info("run_signal_not_sent", run_id=run.id, signal="SIGTERM", error=exc.message)
        except HearthError as exc:
            _log.info("run_signal_not_sent", run_id=run.id, signal="SIGTERM", error=exc.message)
        self._chore(self._kill_after_grace(run))

    async def _asleep(self, vm_id: str) -> bool:
        try:
            return await self.execs.asleep(vm_id)
        except HearthError:
            return False

    async def _stop_once_awake(self, run: RunRecord) -> None:
        """``_stop`` without waking the VM: each signal waits for it to run."""
        await self._signal_once_awake(run, "SIGTERM")
        await self._kill_after_grace(run)

    async def _kill_after_grace(self, run: RunRecord) -> None:
        await asyncio.sleep(CANCEL_GRACE_S)
        try:
            ended = (await self.store.runs.get(run.id)).is_terminal
        except NotFound:
            _log.info("run_signal_not_sent", run_id=run.id, signal="SIGKILL", error="no run")
            return
        if not ended:
            await self._signal_once_awake(run, "SIGKILL")

    async def _signal_once_awake(self, run: RunRecord, signal: str) -> None:
        """Signal the run's CLI, once its VM runs (not woken for it); none once the VM ended."""
        assert run.exec_id is not None
        try:
            await self.execs.kill_once_awake(run.vm_id, run.exec_id, signal)
        except HearthError as exc:
            _log.info("run_signal_not_sent", run_id=run.id, signal=signal, error=exc.message)

    def _chore(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background (cancelled by ``shutdown``)."""
        chore = asyncio.create_task(coroutine)
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    # -- restarts -------------------------------------------------------------------------------

    async def recover(self) -> None:
        """After a (re)start: read on every run still running, and stop again the CLI of one
        cancelled (the last controller may have stopped before it could, or been waiting for
        its VM to run again); a run caught while starting cannot be found again (its exec id
        was not stored) and fails saying so."""
        for run in await self.store.runs.list(statuses=[RunStatus.RUNNING]):
            _log.info("run_reattached", run_id=run.id, vm_id=run.vm_id, cursor=run.exec_cursor)
            self._attach(run)
            if run.cancel_requested:
                self._chore(self._stop_once_awake(run))
        for run in await self.store.runs.list(statuses=[RunStatus.STARTING]):
            await self.store.runs.transition(
                run.id,
                RunStatus.STARTING,
                RunStatus.FAILED,
                failure_code="cli_crashed",
                error_message="the controller stopped while the run was starting",
            )

    async def shutdown(self) -> None:
        """Stop reading (the CLIs run on under their agents; a restart re-attaches)."""
        tasks = [*self._pumps.values(), *self._chores]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until every pump has ended (tests)."""
        while self._pumps:
            await asyncio.gather(*self._pumps.values(), return_exceptions=True)


def _ids(low: int, high: int) -> str:
    """Event ids ``low`` to ``high``, as a message names them."""
    return f"event {low} is" if low == high else f"events {low} to {high} are"
