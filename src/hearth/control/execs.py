"""ExecService: commands run in users' CLI VMs, through each VM's agent.

The command runs under the VM's agent (``hearth_agent.execs``), in its own process group, so it
outlives a client that disconnects, and a controller restart loses nothing of it: its events
stay with the agent until read, and a reader resumes after the last event id it saw. This
service checks who may reach the VM and that it can run anything (a ready CLI VM), adds the
controller's limits (how many at once, how long), and translates the agent's events to the API's
wire form.

How long a command may run is the operator's to bound (``TimeLimit``): a client's command
``HEARTH_EXEC_TIMEOUT_S``, a terminal's shell ``HEARTH_TERMINAL_TIMEOUT_S``, a run
``HEARTH_RUN_TIMEOUT_S``; each is the default and the most, and a request for longer is refused
(422) rather than cut short. While a VM's agent is being replaced (``hold``), nothing new starts
in it (409 naming why).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hearth.agent_client import AgentClient, AgentError, AgentEvent
from hearth.config import Settings
from hearth.control.lifetimes import Lifetimes
from hearth.control.network import CliNetworks
from hearth.control.vms import VmService
from hearth.errors import Conflict, InvalidInput, VmEnded
from hearth.images.trust import GUEST_TLS_ENV
from hearth.store.records import VmRecord
from hearth.vm.types import VmState, VmType

# The statuses a VM is in between two stretches of running (unhealthy ends ready or failed):
# what the controller follows in it on its own waits them out, without waking it.
ASLEEP = (
    VmState.PAUSED,
    VmState.HIBERNATING,
    VmState.HIBERNATED,
    VmState.BOOTING,
    VmState.UNHEALTHY,
)
# How often a follower waiting for a sleeping VM looks at its row.
AWAKE_POLL_S = 1.0


class StreamSlept(AgentError):
    """A followed command's stream broke because its VM slept; the VM runs again now."""

    code = "agent_error"
    http_status = 502


@dataclass(frozen=True)
class TimeLimit:
    """How long one kind of command may run: the default when a request names no timeout, and
    the most it may name; ``setting`` is the operator's setting that says so."""

    most_s: float
    setting: str

    def timeout_for(self, asked: float | None) -> float:
        """``asked``, or the most when nothing was asked; InvalidInput past the most."""
        if asked is None:
            return self.most_s
        if asked > self.most_s:
            raise InvalidInput(
                f"timeoutS {asked:g} is more than this controller allows: {self.setting} is "
                f"{self.most_s:g} s, the default and the most"
            )
        return asked


@dataclass(frozen=True)
class ExecRequest:
    """A command to run, as the API received it (already validated)."""

    cmd: list[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    stdin: str | None = None
    stdin_open: bool = False
    timeout_s: float | None = None
    # On a pseudo-terminal of (cols, rows): one output stream, stdin open (``hearth terminal``).
    pty: tuple[int, int] | None = None


@dataclass(frozen=True)
class ExecEvent:
    """One event on the API's stream: ``stdout``/``stderr`` chunks, then one ``exit``."""

    id: int
    type: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: AgentEvent) -> ExecEvent:
        """The agent's event with the API's field names."""
        return cls(id=event.id, type=event.type, data=_wire(event.data))


class ExecService:
    """Starts commands in CLI VMs and relays their events, stdin and signals."""

    def __init__(
        self, *, settings: Settings, vms: VmService, networks: CliNetworks, lifetimes: Lifetimes
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.networks = networks
        # Every call here is use of the VM; a paused one is resumed first (its autoResume).
        self.lifetimes = lifetimes
        self._holds: dict[str, str] = {}  # VM id → why nothing may start in it now

    def _limit_of(self, request: ExecRequest) -> TimeLimit:
        # Only a terminal's shell runs on a pseudo-terminal (the API's exec takes none).
        if request.pty is not None:
            return TimeLimit(self.settings.terminal_timeout_s, "HEARTH_TERMINAL_TIMEOUT_S")
        return TimeLimit(self.settings.exec_timeout_s, "HEARTH_EXEC_TIMEOUT_S")

    @contextlib.contextmanager
    def hold(self, vm_id: str, why: str) -> Iterator[None]:
        """While the block runs, starting anything in VM ``vm_id`` (a command, a run, a
        terminal's shell) is refused with Conflict saying ``why``; what runs already runs on."""
        self._holds[vm_id] = why
        try:
            yield
        finally:
            if self._holds.get(vm_id) == why:
                del self._holds[vm_id]

    async def runnable(self, vm_id: str, user_id: str | None) -> VmRecord:
        """A VM the caller may use (NotFound otherwise) that can run commands: a ready CLI VM
        (Conflict naming what it is otherwise; a paused one is resumed first unless its
        autoResume is off). Every route that works inside a VM asks this: it counts as use."""
        record = await self.vms.get(vm_id, user_id=user_id)
        if record.vm_type is not VmType.CLI:
            raise Conflict(
                f"VM {vm_id} is a {record.vm_type.value} VM; commands, runs, files and terminals "
                "are for CLI VMs "
                "(a Browser VM serves one login)"
            )
        record = await self.lifetimes.ensure_running(record)
        if record.status is not VmState.READY:
            raise Conflict(f"VM {vm_id} is {record.status.value}; it must be ready for this")
        return record

    async def agent(self, vm_id: str, user_id: str | None) -> AgentClient:
        """The agent of a VM the caller may use (NotFound otherwise) that can run commands."""
        await self.runnable(vm_id, user_id)
        return self._agent_of(vm_id)

    def _agent_of(self, vm_id: str) -> AgentClient:
        vm = self.vms.live_vm(vm_id)
        return AgentClient(str(vm.agent_url), self.vms.agent_token(vm_id), vm_id=vm_id)

    async def start(
        self,
        vm_id: str,
        user_id: str | None,
        request: ExecRequest,
        *,
        limit: TimeLimit | None = None,
    ) -> dict[str, Any]:
        """Start the command; ``{"execId", "pid"}``. InvalidInput for a ``timeout_s`` past its
        limit (``limit``, else a client's command's or, on a pseudo-terminal, a terminal's
        shell's), checked before the VM is touched; Conflict while the VM is held (``hold``);
        TooManyRunning past the per-VM cap."""
        limit = limit or self._limit_of(request)
        request = dataclasses.replace(request, timeout_s=limit.timeout_for(request.timeout_s))
        agent = await self.agent(vm_id, user_id)
        if (why := self._holds.get(vm_id)) is not None:
            raise Conflict(why)
        # The agent client checked its answer: a short exec id and an integer pid (502 else).
        started = await agent.exec_start(self.agent_request(vm_id, request))
        self.lifetimes.started_exec(vm_id, started["exec_id"])
        return {"execId": started["exec_id"], "pid": started["pid"]}

    def agent_request(self, vm_id: str, request: ExecRequest) -> dict[str, Any]:
        """The body of the agent's ``POST /exec`` that runs ``request`` in VM ``vm_id``: the
        command with the controller's limits, the guest's TLS trust and the VM's egress proxy."""
        body: dict[str, Any] = {
            "cmd": request.cmd,
            "timeout_s": request.timeout_s or self.settings.exec_timeout_s,
            "max_running": self.settings.exec_max_per_vm,
        }
        # The guest's TLS trust and the VM's egress proxy, unless the command says otherwise.
        env = {**GUEST_TLS_ENV, **self.networks.proxy_env(vm_id), **(request.env or {})}
        if env:
            body["env"] = env
        if request.cwd is not None:
            body["cwd"] = request.cwd
        if request.stdin is not None:
            body["stdin"] = request.stdin
        if request.stdin_open:
            body["stdin_open"] = True
        if request.pty is not None:
            body["pty"] = {"cols": request.pty[0], "rows": request.pty[1]}
        return body

    async def events(
        self, vm_id: str, user_id: str | None, exec_id: str, *, after: int = 0
    ) -> AsyncIterator[ExecEvent]:
        """The command's events after id ``after``, as they happen, ending with ``exit``."""
        agent = await self.agent(vm_id, user_id)
        # Followed (a run's pump after a restart, a terminal): the VM is in use while it runs.
        self.lifetimes.started_exec(vm_id, exec_id)
        async for event in agent.exec_events(exec_id, after=after):
            yield ExecEvent.of(event)

    async def follow(self, vm_id: str, exec_id: str, *, after: int = 0) -> AsyncIterator[ExecEvent]:
        """``events`` for what the controller follows on its own (a run's pump, a terminal's
        output), which is not use of the VM: it never wakes one. While the VM sleeps (paused,
        hibernated, waking, unhealthy) this waits; a stream its sleep broke raises StreamSlept
        once the VM runs again (read again from where the caller stands: reading after an id
        tells the agent it may drop what came before); VmEnded once the VM has ended."""
        await self._awake(vm_id)
        agent = self._agent_of(vm_id)
        self.lifetimes.follows_exec(vm_id, exec_id)
        try:
            async for event in agent.exec_events(exec_id, after=after):
                yield ExecEvent.of(event)
        except AgentError as exc:
            if not await self.asleep(vm_id):
                raise
            await self._awake(vm_id)
            raise StreamSlept(f"VM {vm_id} slept while its command was followed") from exc

    async def kill_once_awake(self, vm_id: str, exec_id: str, signal: str) -> dict[str, Any]:
        """Signal a command for the controller (a closed terminal's shell) without waking its
        VM: a sleeping one is signalled once it runs again; none when it ends first."""
        try:
            await self._awake(vm_id)
        except VmEnded:
            return {}
        agent = self._agent_of(vm_id)
        return _wire(await agent.exec_kill(exec_id, {"signal": signal}))

    async def asleep(self, vm_id: str) -> bool:
        """Whether VM ``vm_id`` is between two stretches of running (``ASLEEP``)."""
        return (await self.vms.get(vm_id)).status in ASLEEP

    async def _awake(self, vm_id: str) -> None:
        """Return once VM ``vm_id`` is ready; VmEnded once it has ended."""
        while (record := await self.vms.get(vm_id)).status is not VmState.READY:
            if record.status not in ASLEEP:
                raise VmEnded(f"VM {vm_id} is {record.status.value}")
            await asyncio.sleep(AWAKE_POLL_S)

    async def opened(
        self, vm_id: str, user_id: str | None, exec_id: str, *, after: int = 0
    ) -> AsyncIterator[ExecEvent]:
        """``events``, having checked first (before any byte of a response) that the command
        exists and the VM can be reached, so that a refusal is an error answer, not a stream."""
        await self.status(vm_id, user_id, exec_id)
        return self.events(vm_id, user_id, exec_id, after=after)

    async def status(self, vm_id: str, user_id: str | None, exec_id: str) -> dict[str, Any]:
        """Whether the command runs, and how it ended."""
        agent = await self.agent(vm_id, user_id)
        return _wire(await agent.exec_status(exec_id))

    async def stdin(
        self, vm_id: str, user_id: str | None, exec_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Write to the command's stdin (``eof`` closes it)."""
        agent = await self.agent(vm_id, user_id)
        return _wire(await agent.exec_stdin(exec_id, body))

    async def resize(
        self, vm_id: str, user_id: str | None, exec_id: str, cols: int, rows: int
    ) -> dict[str, Any]:
        """Set the size of the command's terminal (Conflict for a command without one)."""
        agent = await self.agent(vm_id, user_id)
        return _wire(await agent.exec_resize(exec_id, {"cols": cols, "rows": rows}))

    async def kill(
        self, vm_id: str, user_id: str | None, exec_id: str, signal: str
    ) -> dict[str, Any]:
        """Signal the command's whole process group."""
        agent = await self.agent(vm_id, user_id)
        return _wire(await agent.exec_kill(exec_id, {"signal": signal}))


def _wire(payload: dict[str, Any]) -> dict[str, Any]:
    """An agent's JSON answer with the API's camelCase names (nested objects too)."""
    return {
        _camel(name): _wire(value) if isinstance(value, dict) else value
        for name, value in payload.items()
    }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
