"""A flood of connections to one egress proxy cannot hold the controller's file descriptors:
over real sockets on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from hearth.metrics import ControllerMetrics
from hearth.network.egress import EgressProxy, EgressTimeouts

LOOPBACK = "127.0.0.1"
STEP = 5.0
CAP = 4
FLOOD = 120


def open_fds() -> int:
    """How many file descriptors this process (test and proxy alike) holds."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def metrics() -> ControllerMetrics:
    return ControllerMetrics()


@pytest.fixture
async def proxy(metrics: ControllerMetrics) -> AsyncIterator[EgressProxy]:
    timeouts = EgressTimeouts(request=1.0)
    proxy = EgressProxy([], max_connections=CAP, metrics=metrics, timeouts=timeouts)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_connections_far_beyond_the_limit_are_reset_at_once_not_held(
    proxy: EgressProxy, metrics: ControllerMetrics
) -> None:
    # A guest that opens connections and neither sends, reads nor closes them.
    before = open_fds()
    held = [await asyncio.open_connection(LOOPBACK, proxy.port) for _ in range(FLOOD)]
    await asyncio.sleep(0.3)  # the proxy accepted them all; well within a refusal's linger
    proxy_side = open_fds() - before - FLOOD  # what the proxy holds for them
    # At most twice the limit: the limit's connections, and as many being refused with a 503.
    assert proxy_side <= 2 * CAP + 2
    counted = metrics.registry.get_sample_value(
        "hearth_egress_requests_total", {"outcome": "overloaded"}
    )
    assert counted is not None
    assert counted >= FLOOD - 2 * CAP
    # The ones still open at the proxy are answered 503; the rest see their connection end.
    answers = await asyncio.gather(
        *(asyncio.wait_for(reader.read(), STEP) for reader, _ in held), return_exceptions=True
    )
    assert sum(1 for a in answers if isinstance(a, bytes) and a.startswith(b"HTTP/1.1 503")) > 0
    for _, writer in held:
        writer.close()
