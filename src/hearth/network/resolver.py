"""Name resolution for the egress proxy: the host's resolver on threads of its own, and a cap on
how many lookups one proxy has in flight.

``getaddrinfo`` holds a thread until the resolver answers, and a running lookup cannot be
cancelled: a CONNECT whose deadline passes gets its 504, but the thread stays busy until the DNS
server answers or the resolver gives up (``resolv.conf``'s timeout times its attempts). On the
loop's default executor (``min(32, cpus + 4)`` threads) one VM asking for names whose servers
never answer would hold every thread, and every other VM's lookups and the controller's own
``asyncio.to_thread`` work would wait behind them. So lookups run on an executor of their own,
and each proxy holds at most ``limit`` of its threads: a lookup keeps its place until its thread
returns, not until its CONNECT gives up, and further CONNECTs wait their turn within their own
deadline.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from hearth.errors import InvalidInput

# Answers the addresses (IP literals, in preference order) of a host name; may raise OSError.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Shared by every proxy of the process (and by webhook targets): with each proxy capped at a few,
# one VM cannot hold them all, and the loop's default executor never runs a lookup.
LOOKUP_THREADS = 32
_lookup_threads = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="hearth-dns")


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (``getaddrinfo``, on the lookup threads): the TCP addresses of
    ``host``, in its order."""
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(_lookup_threads, lookup)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


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
        inside ``getaddrinfo`` still runs until it returns, holding nothing of this proxy)."""
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
