"""RunService: the vendor CLIs' own headless runs in users' CLI VMs, as one event schema.

A run is ``claude -p`` / ``codex exec`` / ``gemini -p`` started as an exec under the VM's agent,
with the login the auth flow delivered into that VM (Hearth adds no API key). Its row and its
events (bounded) live in the store; a ``RunPump`` per run in progress reads the CLI's output and
maps it. The process lives under the agent, so a client that disconnects loses nothing and a
controller that restarts re-attaches to every run still in progress (``recover``).

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
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hearth.config import Settings
from hearth.control.execs import ExecRequest, ExecService
from hearth.control.run_pump import RunPump
from hearth.control.vms import VmService
from hearth.errors import BodyTooLarge, EventsGone, HearthError, NotFound, NotLoggedIn
from hearth.logging import get_logger
from hearth.runs import RunEventType, run_command
from hearth.runs.states import RunStatus
from hearth.store import Store
from hearth.store.records import RunEventRecord, RunRecord, VmRecord
from hearth_agent.wire import Provider

_log = get_logger("control.runs")

# A reader with nothing new wakes this often to look again (a missed wake-up costs no more).
READER_POLL_S = 5.0
# A cancelled CLI gets this long to stop on SIGTERM before its whole group is killed.
CANCEL_GRACE_S = 1.0


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

        Refused before anything starts: a prompt over the cap (413), a VM the caller may not
        see (404) or that cannot run anything (409), a provider never delivered into it (409
        ``not_logged_in``), the per-VM cap (429).
        """
        if len(request.prompt.encode("utf-8")) > self.settings.run_prompt_max_bytes:
            raise BodyTooLarge(
                f"the prompt is larger than {self.settings.run_prompt_max_bytes} bytes "
                "(HEARTH_RUN_PROMPT_MAX_BYTES)"
            )
        record = await self.execs.runnable(vm_id, user_id)
        await self._require_login(record, request.provider)
        timeout_s = request.timeout_s or self.settings.run_timeout_s
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
            started = await self.execs.start(vm_id, user_id, command)
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
            seq=1,
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
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("run_pump_crashed", run_id=pump.run.id)
        finally:
            self._pumps.pop(pump.run.id, None)
            self._wake(pump.run.id)

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
        """The run's events after id ``after``, as they come, ending with its last; checked
        before the first is read (so a refusal is an error answer, not a broken stream)."""
        run = await self.get(vm_id, run_id, user_id)
        if after and after < run.last_event_id:
            first = await self.store.runs.first_event_id(run_id)
            if first is not None and after < first - 1:
                raise EventsGone(
                    f"run {run_id} keeps events from id {first} on; event {after + 1} and "
                    "older ones are no longer kept"
                )
        return self._follow(run_id, after)

    async def _follow(self, run_id: str, after: int) -> AsyncIterator[RunEventRecord]:
        while True:
            wakeup = self._wakeups.setdefault(run_id, asyncio.Event())
            batch = await self.store.runs.events(run_id, after=after)
            for event in batch:
                if after and event.seq != after + 1:
                    # Fallen behind what is kept: ended here, the reader's reconnect is told
                    # which events are gone (410) instead of reading on past the hole.
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
        """SIGTERM to the run's CLI now, SIGKILL after the grace."""
        await self._signal(run, "SIGTERM")
        chore = asyncio.create_task(self._kill_after_grace(run))
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    async def _signal(self, run: RunRecord, signal: str) -> None:
        assert run.exec_id is not None
        try:
            await self.execs.kill(run.vm_id, None, run.exec_id, signal)
        except HearthError as exc:
            _log.info("run_signal_not_sent", run_id=run.id, signal=signal, error=exc.message)

    async def _kill_after_grace(self, run: RunRecord) -> None:
        await asyncio.sleep(CANCEL_GRACE_S)
        if not (await self.store.runs.get(run.id)).is_terminal:
            await self._signal(run, "SIGKILL")

    # -- restarts -------------------------------------------------------------------------------

    async def recover(self) -> None:
        """After a (re)start: read on every run still running; a run caught while starting
        cannot be found again (its exec id was not stored) and fails saying so."""
        for run in await self.store.runs.list(statuses=[RunStatus.RUNNING]):
            _log.info("run_reattached", run_id=run.id, vm_id=run.vm_id, cursor=run.exec_cursor)
            self._attach(run)
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
