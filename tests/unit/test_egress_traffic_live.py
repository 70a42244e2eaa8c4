"""A tunnel's bytes are counted while they flow, not when it closes: a long-lived tunnel shows its
traffic (``EgressProxy.traffic``, read by ``GET /api/vms/{id}/network``, and the
``hearth_egress_bytes_total`` metric) while it is open. Loopback only; names: a fake resolver."""

from __future__ import annotations

import asyncio

from hearth.metrics import ControllerMetrics
from hearth.network.egress import EgressProxy

STEP = 5.0
CHUNK = 100_000
ROUNDS = 20


async def test_an_open_tunnels_bytes_are_counted_as_they_flow(echo_port: int) -> None:
    async def resolver(_host: str, _port: int) -> list[str]:
        return ["127.0.0.1"]

    metrics = ControllerMetrics()

    def metric(direction: str) -> float | None:
        labels = {"direction": direction}
        return metrics.registry.get_sample_value("hearth_egress_bytes_total", labels)

    async with EgressProxy(
        [f"ok.test:{echo_port}"],
        resolver=resolver,
        allow_private=[f"127.0.0.1:{echo_port}"],
        metrics=metrics,
    ) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(f"CONNECT ok.test:{echo_port} HTTP/1.1\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readline(), STEP)).startswith(b"HTTP/1.1 200")
        await reader.readline()
        for _ in range(ROUNDS):
            writer.write(b"x" * CHUNK)
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(CHUNK), STEP)

        carried = CHUNK * ROUNDS  # every byte sent came back: both directions carried it all
        assert (proxy.traffic.bytes_up, proxy.traffic.bytes_down) == (carried, carried)
        assert (metric("up"), metric("down")) == (carried, carried)

        writer.close()
        await asyncio.sleep(0.2)  # the tunnel closes: nothing is counted twice
        assert (proxy.traffic.bytes_up, proxy.traffic.bytes_down) == (carried, carried)
        assert (metric("up"), metric("down")) == (carried, carried)
