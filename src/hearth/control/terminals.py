"""TerminalService: a login shell on a pseudo-terminal in a CLI VM, reached by a one-time link.

``open_link`` is ``POST /api/vms/{id}/terminal``: the caller must be allowed to run commands in
the VM (``ExecService.runnable``: their own ready CLI VM, or any for an admin), and gets a link
token bound to that VM and that caller, valid for ``terminal_link_ttl_s`` and for one use. Only
the token's hash is kept, in this process's memory (``hearth.links``): never in the store and
never in a log. The terminal page presents the token on its WebSocket; ``claim`` consumes it
(a second use, a wrong token or an expired one is refused alike) and ``run`` starts the shell
through ``ExecService`` (the VM's egress proxy environment, the per-VM cap, the exec timeout)
as a PTY exec, then relays between the page and the agent until either side ends:

    agent → page   the terminal's output bytes; ``ready`` once the shell runs, ``exit`` at its end
    page → agent   input bytes (written to the terminal in pieces of at most 64 KiB,
                   coalesced while a write is in flight); ``Resize`` (the kernel then signals
                   SIGWINCH)

While the shell does not read its input, what the page sends waits in the controller, at most
``INPUT_QUEUE_BYTES``; past that the page's socket is not read until the shell takes some
(backpressure: nothing is dropped for want of room). A piece the shell has refused for about
20 s is dropped, and the page is told how many bytes were lost.

Whatever ends the relay (the page closing, the shell exiting, the controller stopping, the key
that asked for the link revoked), the exec is killed: the agent ends its whole session, so
nothing the terminal started runs on. Why it ended is told to the page only after the kill, so a
page that does not read cannot hold its shell open. A page is taken for gone once a send to it
fails for want of room (``TerminalPeer``: it took nothing for a while): the relay ends there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hearth.agent_client import AgentError
from hearth.agent_output import GarbledOutput, output_bytes
from hearth.control.execs import ExecRequest, ExecService, StreamSlept
from hearth.control.terminal_input import INPUT_ITEM_COST as INPUT_ITEM_COST
from hearth.control.terminal_input import INPUT_QUEUE_BYTES, InputQueue
from hearth.control.terminal_input import MAX_INPUT_CHUNK as MAX_INPUT_CHUNK
from hearth.control.terminal_input import Resize as Resize
from hearth.errors import HearthError, TooManyRunning, Unauthorized
from hearth.links import link_token_hash, link_token_matches, mint_link_token
from hearth.logging import get_logger
from hearth.network.provider_hosts import quiet_env

# The user's login shell, in the workspace (the agent's default cwd). Beside what every command in
# the VM gets (``ExecService.start``: the guest's TLS trust, the egress proxy), it gets what a run
# gives a vendor CLI to keep it quiet behind the proxy, for whichever CLI the user starts.
SHELL = ("bash", "-l")
SHELL_ENV = {"SHELL": "/bin/bash", "COLORTERM": "truecolor", **quiet_env()}
# Unopened links kept at once; past it a new link is refused until some expire.
MAX_PENDING_LINKS = 1024
MAX_PENDING_LINKS_PER_USER = 32  # of them, one caller's (all admins count as one)
# How often input the agent's full stdin backlog refused is sent again (about 20 s in all).
BACKLOG_RETRIES = 25
# How often a broken event stream from the agent is picked up again in a row.
OUTPUT_RESUMES = 3
KILL_TIMEOUT_S = 10.0
# How often an open terminal looks whether the key that asked for it was revoked.
KEY_RECHECK_S = 1.0
_log = get_logger("control.terminals")
# What a page is told when its terminal ends (or does not start) because the controller stops.
_STOPPING = {"type": "error", "code": "stopping", "message": "the controller is stopping"}
# What a page is told when its terminal ends because the key that asked for its link was revoked.
_REVOKED = {
    "type": "error",
    "code": "unauthorized",
    "message": "the API key that asked for this terminal was revoked",
}


@dataclass(frozen=True)
class TerminalLink:
    """A new link: its id, and the token shown once (kept by nobody but the caller)."""

    terminal_id: str
    vm_id: str
    token: str
    expires_in_s: float


@dataclass(frozen=True)
class TerminalGrant:
    """A consumed link: the VM it opens and the caller it was minted for (None: an admin)."""

    terminal_id: str
    vm_id: str
    user_id: str | None
    key_id: str | None = None  # the API key that asked for the link


# Whether the key that asked for a terminal's link was revoked since (its terminal then ends).
KeyRevoked = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class _Pending:
    vm_id: str
    user_id: str | None
    token_hash: str
    expires_at: float
    key_id: str | None


class TerminalPeer(Protocol):
    """The page's end of a terminal (a WebSocket, in the API). A send raises TimeoutError once
    the page has taken nothing for a while (it is gone, and stays so); the service then ends
    the terminal."""

    async def receive(self) -> bytes | Resize | None:
        """The next input bytes or size change; None once the page has gone."""

    async def send_output(self, data: bytes) -> None:
        """Bytes the terminal printed."""

    async def send_status(self, message: dict[str, Any]) -> None:
        """A status message: ``ready``, ``exit`` or ``error``."""


class TerminalService:
    """Mints one-time terminal links and relays the terminals they open."""

    def __init__(
        self,
        *,
        execs: ExecService,
        link_ttl_s: float,
        shell_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.execs = execs
        self.link_ttl_s = link_ttl_s
        self.shell_timeout_s = shell_timeout_s
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._stopping = asyncio.Event()
        self._open: set[asyncio.Event] = set()  # one per terminal; set once its exec is killed
        # Kills of closed terminals' shells, some waiting for their VM to run again.
        self._kills: set[asyncio.Task[None]] = set()

    async def open_link(
        self, vm_id: str, user_id: str | None, *, key_id: str | None = None
    ) -> TerminalLink:
        """A one-time link to a terminal in the VM, for the caller ``user_id`` (None: an admin)
        whose key ``key_id`` asks; NotFound or Conflict as for an exec."""
        await self.execs.runnable(vm_id, user_id)
        now = self._clock()
        for expired in [tid for tid, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[expired]
        if len(self._pending) >= MAX_PENDING_LINKS:
            raise TooManyRunning(
                f"{len(self._pending)} terminal links wait to be opened; retry once some expire"
            )
        mine = sum(p.user_id == user_id for p in self._pending.values())
        if mine >= MAX_PENDING_LINKS_PER_USER:  # one user's flood leaves room for the others
            raise TooManyRunning(
                f"{mine} terminal links of this caller wait to be opened; retry once some expire"
            )
        terminal_id = f"term-{uuid.uuid4()}"
        token = mint_link_token()
        self._pending[terminal_id] = _Pending(
            vm_id=vm_id,
            user_id=user_id,
            token_hash=link_token_hash(token),
            expires_at=now + self.link_ttl_s,
            key_id=key_id,
        )
        _log.info("terminal_link_opened", terminal_id=terminal_id, vm_id=vm_id, user_id=user_id)
        return TerminalLink(
            terminal_id=terminal_id, vm_id=vm_id, token=token, expires_in_s=self.link_ttl_s
        )

    def is_pending(self, terminal_id: str) -> bool:
        """Whether a link with this id waits to be opened (unused, not expired)."""
        pending = self._pending.get(terminal_id)
        return pending is not None and pending.expires_at > self._clock()

    def claim(self, terminal_id: str, token: str) -> TerminalGrant:
        """Consume the link; Unauthorized if it is unknown, used, expired or the token wrong."""
        pending = self._pending.get(terminal_id)
        if pending is None or not link_token_matches(token, pending.token_hash):
            raise Unauthorized("this terminal link is unknown or was already used")
        del self._pending[terminal_id]
        if pending.expires_at <= self._clock():
            raise Unauthorized("this terminal link has expired; ask for a new one")
        return TerminalGrant(
            terminal_id=terminal_id,
            vm_id=pending.vm_id,
            user_id=pending.user_id,
            key_id=pending.key_id,
        )

    async def run(
        self,
        grant: TerminalGrant,
        peer: TerminalPeer,
        size: Resize,
        *,
        revoked: KeyRevoked | None = None,
    ) -> None:
        """Start the shell and relay until the page or the shell ends (or ``close``, or the
        grant's key is ``revoked``: looked at every ``KEY_RECHECK_S``); then kill the exec, and
        only then tell the page why it ended. Once ``close`` has begun none starts: the page is
        told the controller is stopping."""
        if revoked is not None and grant.key_id is not None and await revoked(grant.key_id):
            raise Unauthorized(_REVOKED["message"])
        request = ExecRequest(
            cmd=list(SHELL),
            env=SHELL_ENV,
            pty=(size.cols, size.rows),
            timeout_s=self.shell_timeout_s,  # not a command's: a shell is worked in for hours
        )
        if self._stopping.is_set():  # a link claimed just before ``close``: no shell starts
            await _sent(peer.send_status(_STOPPING))
            return
        ended = asyncio.Event()
        self._open.add(ended)  # from here ``close`` waits for it, its shell's start too
        why: dict[str, Any] | None = None
        try:
            started = await self.execs.start(grant.vm_id, grant.user_id, request)
            exec_id = str(started["execId"])
            _log.info("terminal_started", terminal_id=grant.terminal_id, exec_id=exec_id)
            try:
                why = await self._relay(grant, exec_id, peer, revoked)
            finally:
                await self._kill(grant, exec_id)
        finally:
            self._open.discard(ended)
            ended.set()
        if why is not None:
            await _sent(peer.send_status(why))

    async def close(self) -> None:
        """End every terminal still open and wait (bounded) until each has killed its exec;
        forget the unopened links. Once it has begun no terminal starts, and no kill is left
        to run in the background: those waiting for a sleeping VM are cancelled and waited for
        (its agent ends each shell at its timeout)."""
        self._pending.clear()
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * KILL_TIMEOUT_S):
                await asyncio.gather(*(ended.wait() for ended in list(self._open)))
        kills = list(self._kills)  # none is added once stopping (``_kill``)
        for kill in kills:
            kill.cancel()
        await asyncio.gather(*kills, return_exceptions=True)

    async def _relay(
        self, grant: TerminalGrant, exec_id: str, peer: TerminalPeer, revoked: KeyRevoked | None
    ) -> dict[str, Any] | None:
        """Relay until the terminal ends; what the page is to be told once its shell is killed
        (None: nothing more)."""
        if not await _sent(peer.send_status({"type": "ready"})):
            return None
        key_revoked = asyncio.Event()
        watching = []
        if revoked is not None and grant.key_id is not None:
            watching.append(_until_revoked(grant.key_id, revoked, key_revoked))
        await _first_done(
            self._to_peer(grant, exec_id, peer),
            self._from_peer(grant, exec_id, peer),
            self._stopping.wait(),
            *watching,
        )
        if self._stopping.is_set():
            return _STOPPING
        return _REVOKED if key_revoked.is_set() else None

    async def _to_peer(self, grant: TerminalGrant, exec_id: str, peer: TerminalPeer) -> None:
        last, breaks = 0, 0  # breaks in a row: an event in between starts the count again
        while breaks <= OUTPUT_RESUMES:
            try:
                # Not use of the VM in itself (what the page types is): a paused one is
                # waited for, not woken.
                async for event in self.execs.follow(grant.vm_id, exec_id, after=last):
                    last, breaks = event.id, 0
                    if event.type == "exit":
                        await _sent(peer.send_status({"type": "exit", **event.data}))
                        return
                    output = output_bytes(event.data, f"the agent of VM {grant.vm_id}")
                    if not await _sent(peer.send_output(output)):
                        _log.info("terminal_page_stalled", terminal_id=grant.terminal_id)
                        return  # the page has gone: the terminal ends
            except StreamSlept:
                continue  # the VM slept, and runs again: read on, no break counted
            except AgentError as exc:
                if breaks == OUTPUT_RESUMES or isinstance(exc, GarbledOutput):
                    raise
                await asyncio.sleep(0.2 * 2**breaks)
            breaks += 1

    async def _from_peer(self, grant: TerminalGrant, exec_id: str, peer: TerminalPeer) -> None:
        queue = InputQueue(INPUT_QUEUE_BYTES)

        async def read() -> None:
            while (item := await peer.receive()) is not None:
                await queue.put(item)  # waits while the queue is full: the page is not read

        async def write() -> None:
            while True:
                item = await queue.take()
                try:
                    await self._deliver(grant, exec_id, item)
                except HearthError as exc:
                    # The shell has ended (its exit is on the way to the page) or its VM is
                    # going: what the page types now has nowhere to go.
                    _log.info(
                        "terminal_input_dropped", terminal_id=grant.terminal_id, code=exc.code
                    )
                    lost = len(item) if isinstance(item, bytes) and _backlog_full(exc) else 0
                    if lost and not await _sent(peer.send_status(_input_lost(lost))):
                        return  # the page has gone: the terminal ends

        await _first_done(read(), write())

    async def _deliver(self, grant: TerminalGrant, exec_id: str, item: bytes | Resize) -> None:
        """Resize the terminal, or write a piece (at most ``MAX_INPUT_CHUNK``) to it, again while
        the shell has not read the ones before (the agent's backlog is full), for about 20 s."""
        if isinstance(item, Resize):
            await self.execs.resize(grant.vm_id, grant.user_id, exec_id, item.cols, item.rows)
            return
        body = {"data": base64.b64encode(item).decode("ascii"), "encoding": "base64"}
        for attempt in range(BACKLOG_RETRIES + 1):
            try:
                await self.execs.stdin(grant.vm_id, grant.user_id, exec_id, body)
                return
            except HearthError as exc:
                if not _backlog_full(exc) or attempt == BACKLOG_RETRIES:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def _kill(self, grant: TerminalGrant, exec_id: str) -> None:
        """Kill the shell, waiting at most ``KILL_TIMEOUT_S``: a VM asleep meanwhile is not
        woken for it, and its shell is killed once the VM runs again (while this runs). Once
        ``close`` has begun the kill is this call's alone, not left to run after it, and a
        sleeping VM's shell is left to its agent's timeout."""
        if self._stopping.is_set():
            with contextlib.suppress(HearthError):
                if await self.execs.asleep(grant.vm_id):
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kill_once_awake(grant, exec_id), KILL_TIMEOUT_S)
            return
        kill = asyncio.create_task(self._kill_once_awake(grant, exec_id))
        self._kills.add(kill)
        kill.add_done_callback(self._kills.discard)
        with contextlib.suppress(HearthError):
            if await self.execs.asleep(grant.vm_id):
                return  # not waited for: it may be days
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(kill), KILL_TIMEOUT_S)

    async def _kill_once_awake(self, grant: TerminalGrant, exec_id: str) -> None:
        try:
            await self.execs.kill_once_awake(grant.vm_id, exec_id, "SIGKILL")
        except HearthError as exc:
            # The shell has ended, or its agent does not answer: it ends the exec at its
            # timeout regardless.
            _log.warning("terminal_kill_failed", terminal_id=grant.terminal_id, error=exc.code)
        _log.info("terminal_ended", terminal_id=grant.terminal_id, exec_id=exec_id)


def _backlog_full(exc: HearthError) -> bool:
    """Whether the agent refused a write because the shell has not read the ones before."""
    return getattr(exc, "agent_code", None) == "stdin_backlog_full"


def _input_lost(size: int) -> dict[str, Any]:
    """What the page is told of input dropped because the shell would not read it: the
    shell runs on, and so does the terminal."""
    message = f"the shell did not read its input for about 20 s: {size} bytes typed were dropped"
    return {"type": "error", "code": "stdin_backlog_full", "message": message}


async def _first_done(*coroutines: Any) -> None:
    """Run ``coroutines`` until the first ends; cancel the rest; re-raise the first's error."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in done:
        task.result()


async def _sent(sending: Awaitable[None]) -> bool:
    """Whether the page took a message: False once it is gone for want of room (TimeoutError,
    ``TerminalPeer``)."""
    try:
        await sending
    except TimeoutError:
        return False
    return True


async def _until_revoked(key_id: str, revoked: KeyRevoked, key_revoked: asyncio.Event) -> None:
    """Return once the key ``key_id`` is revoked (looked at every ``KEY_RECHECK_S``), having set
    ``key_revoked``. The page is told after the kill: a send may wait while it does not read."""
    while not await revoked(key_id):
        await asyncio.sleep(KEY_RECHECK_S)
    key_revoked.set()
