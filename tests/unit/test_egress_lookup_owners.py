"""No owner can starve another's name lookups: each VM (a proxy's ``owner``) holds at most a few
lookup threads, counted until each thread really returns -- after its CONNECT gave up and after
its path closed and reopened -- and no pool is shared that enough owners could fill. Over real
sockets on 127.0.0.1 only; ``socket.getaddrinfo`` is replaced by a stand-in for a DNS server."""

from __future__ import annotations

import asyncio

from hearth.network.egress import EgressProxy, EgressTimeouts
from hearth.network.resolver import system_resolver
from tests.unit.test_egress_lookups import (
    LOOPBACK,
    PLACES,
    STEP,
    StuckDns,
    dns,
    status_of_connect,
    upstream_port,
)

__all__ = ["dns", "upstream_port"]  # fixtures

QUICK = EgressTimeouts(request=STEP, connect=0.5)
FLOODERS = 9  # more owners than the 32 shared threads there were held at 4 each


def victim(port: int) -> EgressProxy:
    return EgressProxy(
        [f"fast.test:{port}"],
        owner="vm-victim",
        allow_private=[f"{LOOPBACK}:{port}"],
        timeouts=EgressTimeouts(request=STEP, connect=2.0),
    )


async def test_many_owners_whose_names_never_resolve_starve_no_other_vm_nor_webhook(
    dns: StuckDns, upstream_port: int
) -> None:
    flooders = [
        EgressProxy(["*.never.test"], owner=f"vm-bad{i}", timeouts=QUICK) for i in range(FLOODERS)
    ]
    other = victim(upstream_port)
    for proxy in [*flooders, other]:
        await proxy.start()
    try:
        flood = [
            status_of_connect(proxy, f"n{i}.never.test:443")
            for proxy in flooders
            for i in range(PLACES)
        ]
        assert set(await asyncio.gather(*flood)) == {504}
        assert dns.stuck == FLOODERS * PLACES

        assert await status_of_connect(other, f"fast.test:{upstream_port}") == 200
        # A webhook receiver's lookup does not wait behind them either.
        assert await asyncio.wait_for(system_resolver("fast.test", 443), 1.0) == [LOOPBACK]
    finally:
        dns.release.set()
        for proxy in [*flooders, other]:
            await proxy.close()


async def test_a_vm_reopening_its_path_gets_no_more_lookup_threads(
    dns: StuckDns, upstream_port: int
) -> None:
    for cycle in range(3):  # woken, hibernated, woken again: a new path each time
        async with EgressProxy(["*.never.test"], owner="vm-same", timeouts=QUICK) as path:
            flood = [status_of_connect(path, f"c{cycle}-{i}.never.test:443") for i in range(PLACES)]
            assert set(await asyncio.gather(*flood)) == {504}
    # The closed paths' lookups still hold their threads, counted against the VM: its later
    # paths waited for them instead of starting more.
    assert dns.most_stuck == PLACES

    async with victim(upstream_port) as other:
        assert await status_of_connect(other, f"fast.test:{upstream_port}") == 200

    dns.release.set()  # the DNS server answers at last: the VM's threads return, and it
    async with EgressProxy(  # resolves again
        [f"fast.test:{upstream_port}"],
        owner="vm-same",
        allow_private=[f"{LOOPBACK}:{upstream_port}"],
        timeouts=EgressTimeouts(request=STEP, connect=2.0),
    ) as path:
        assert await status_of_connect(path, f"fast.test:{upstream_port}") == 200
