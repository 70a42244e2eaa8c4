"""Name resolution for the egress proxy and webhook targets: the host's resolver on threads of
its own, each owner holding only a few of them, and a cap on how many lookups one proxy has in
flight.

``getaddrinfo`` holds a thread until the resolver answers, and a running lookup cannot be
cancelled: a CONNECT whose deadline passes gets its 504, but the thread stays busy until the DNS
server answers or the resolver gives up (``resolv.conf``'s timeout times its attempts). So no
lookup runs on a pool that others share: each runs on a thread started for it, which ends when
``getaddrinfo`` returns, and each *owner* -- a VM or a login (the egress proxy's ``owner``), a
webhook receiver's host -- holds at most a few such threads at once. A thread counts against its
owner until it really returns: after its CONNECT gave up, and after the owner's path closed and
a new one opened, so neither waiting nor re-opening gets an owner more. A further lookup of that
owner waits, within its caller's deadline, for one of its own threads to return. One owner whose
names never resolve therefore holds only its own few threads: every other owner's lookups, and
the webhooks' (owners of their own), start at once. Threads alive at one time are at most
``per_owner`` times the owners with a lookup running, which the node's VM and webhook limits
bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any

from hearth.errors import InvalidInput

# Answers the addresses (IP literals, in preference order) of a host name; may raise OSError.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

LOOKUPS_PER_OWNER = 4  # lookup threads one VM or login holds at once (the proxy's own cap too)
LOOKUPS_PER_NAME = 2  # a webhook receiver's name: as many as its attempts at once

_AddrInfo = list[tuple[Any, ...]]  # getaddrinfo's answer; only each sockaddr's host is read


class LookupThreads:
    """``getaddrinfo`` on a thread per lookup, at most ``per_owner`` of them per owner at once,
    each counted against its owner until its thread returns. Thread-safe; shared by loops."""

    def __init__(self, *, per_owner: int) -> None:
        if per_owner < 1:
            raise InvalidInput(f"the lookups per owner must be at least 1, not {per_owner}")
        self._per_owner = per_owner
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def resolver(self, owner: str) -> Resolver:
        """The host's resolver as ``owner``'s lookups."""

        async def resolve(host: str, port: int) -> list[str]:
            return await self.resolve(owner, host, port)

        return resolve

    async def resolve(self, owner: str, host: str, port: int) -> list[str]:
        """The TCP addresses of ``host``, in ``getaddrinfo``'s order, looked up on a thread of
        ``owner``'s once one is free. Cancelling the wait leaves the thread running, counted."""
        await self._take(owner)
        answer: Future[_AddrInfo] = Future()
        try:
            threading.Thread(
                target=_getaddrinfo, args=(answer, host, port), name="hearth-dns", daemon=True
            ).start()
        except BaseException:
            self._give_back(owner)
            raise
        answer.add_done_callback(lambda _: self._give_back(owner))
        infos = await asyncio.wrap_future(answer)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _take(self, owner: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                held = self._held.get(owner, 0)
                if held < self._per_owner:
                    self._held[owner] = held + 1
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                entry = (loop, waiter)
                self._waiters.setdefault(owner, []).append(entry)
            try:
                await waiter
            finally:
                with self._lock:
                    waiting = self._waiters.get(owner, [])
                    if entry in waiting:
                        waiting.remove(entry)
                    if not waiting:
                        self._waiters.pop(owner, None)

    def _give_back(self, owner: str) -> None:
        """One of ``owner``'s threads returned (on that thread): wake the owner's waiters, who
        try again (a waiter whose deadline passed meanwhile takes nothing)."""
        with self._lock:
            held = self._held.get(owner, 0) - 1
            if held > 0:
                self._held[owner] = held
            else:
                self._held.pop(owner, None)
            waiting = self._waiters.pop(owner, [])
        for loop, waiter in waiting:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(_wake, waiter)


def _getaddrinfo(answer: Future[_AddrInfo], host: str, port: int) -> None:
    if not answer.set_running_or_notify_cancel():
        return
    try:
        answer.set_result(list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
    except BaseException as exc:  # handed to the caller (OSError, mostly), never lost
        answer.set_exception(exc)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# Process-wide, so an owner's threads are counted across every path it ever opened: lookups
# owned by a VM or login (the egress proxies'), and lookups owned by the name asked (webhooks').
owner_lookups = LookupThreads(per_owner=LOOKUPS_PER_OWNER)
_name_lookups = LookupThreads(per_owner=LOOKUPS_PER_NAME)


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (``getaddrinfo``) for a lookup owned by nobody but its name (a
    webhook receiver's): a name that never resolves holds back no other name's lookups."""
    return await _name_lookups.resolve(host, host, port)


class LookupLimit:
    """One proxy's lookups through ``resolver``, at most ``limit`` of them in flight. A lookup
    holds its place until the resolver returns, even after its caller stopped waiting."""

    def __init__(self, resolver: Resolver, *, limit: int) -> None:
        if limit < 1:
            raise InvalidInput(f"the lookup limit must be at least 1, not {limit}")
        self._resolver = resolver
        self._places = asyncio.Semaphore(limit)
        self._running: set[asyncio.Task[Sequence[str]]] = set()

    @property
    def in_flight(self) -> int:
        """How many lookups are running (their callers waiting or gone)."""
        return len(self._running)

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        """The resolver's answer for ``host``, once a place is free. Cancelling the wait (a
        deadline) leaves the lookup running, in its place, until the resolver returns."""
        await self._places.acquire()
        lookup = asyncio.create_task(self._lookup(host, port))
        self._running.add(lookup)
        lookup.add_done_callback(self._finished)
        return await asyncio.shield(lookup)

    async def close(self) -> None:
        """Drop every lookup still running: nobody reads its answer (a lookup thread that is
        inside ``getaddrinfo`` runs on until it returns, counted against its owner)."""
        running = list(self._running)
        for lookup in running:
            lookup.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _lookup(self, host: str, port: int) -> Sequence[str]:
        return await self._resolver(host, port)

    def _finished(self, lookup: asyncio.Task[Sequence[str]]) -> None:
        self._running.discard(lookup)
        self._places.release()
        if not lookup.cancelled():
            lookup.exception()  # an answer nobody waits for any more is not an unhandled error
