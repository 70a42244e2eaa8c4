"""Load generators for HTTP benchmarks: closed loop (fixed concurrency) and open loop (fixed rate).

The open loop schedules request ``i`` at ``start + i / rate`` and measures each latency from its
*scheduled* time, so a server (or client) that falls behind shows up in the percentiles instead of
silently lowering the rate (no coordinated omission). Requests beyond ``max_in_flight`` wait in a
semaphore, not in the HTTP client's connection pool, which degrades with thousands of waiters.

Both report how much CPU the client (this process) and the server used during the phase, in
cores: a side near 1.0 is saturated, which says who limited the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from hearth.bench.errors import BenchError
from hearth.bench.processes import process_cpu_seconds
from hearth.bench.stats import Summary

# Connections of the open loop. More made httpx's pool the bottleneck here (a client near one
# core at 150 req/s with 64); 16 keep it light, and queueing beyond them is still timed.
MAX_IN_FLIGHT = 16


@dataclass(frozen=True, kw_only=True)
class CpuUse:
    """CPU used by the load generator and by the server during a phase, in cores (1.0 = one)."""

    client_cores: float
    server_cores: float

    def to_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return {"client_cpu_cores": self.client_cores, "server_cpu_cores": self.server_cores}


class _CpuMeter:
    """Measures the CPU time of this process and of ``server_pid`` across a phase."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = time.perf_counter()
        self.client = time.process_time()
        self.server = process_cpu_seconds(server_pid)

    def stop(self) -> tuple[float, CpuUse]:
        """Wall seconds since the start, and the CPU use over them."""
        wall = time.perf_counter() - self.wall
        return wall, CpuUse(
            client_cores=(time.process_time() - self.client) / wall,
            server_cores=(process_cpu_seconds(self.server_pid) - self.server) / wall,
        )


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """What every load phase measures: each request's latency, the phase's wall time, the CPU."""

    latency: Summary
    wall_s: float
    cpu: CpuUse

    @property
    def answered_rps(self) -> float:
        """Requests answered per second (of an open loop: from its schedule's start)."""
        return self.latency.n / self.wall_s

    def to_dict(self) -> dict[str, object]:
        """The JSON shape: the load applied, then what it measured."""
        return {
            **self._load(),
            "wall_s": self.wall_s,
            **self.cpu.to_dict(),
            **self.latency.seconds(with_samples=False),
        }

    def _load(self) -> dict[str, object]:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ClosedLoopResult(LoadResult):
    """``n`` requests by ``concurrency`` workers, each sending its next when the last answered."""

    concurrency: int

    def _load(self) -> dict[str, object]:
        return {"concurrency": self.concurrency, "throughput_rps": self.answered_rps}


@dataclass(frozen=True, kw_only=True)
class OpenLoopResult(LoadResult):
    """``n`` requests sent on a fixed schedule of ``target_rps``, whatever the answers do."""

    target_rps: float

    def _load(self) -> dict[str, object]:
        return {"target_rps": self.target_rps, "achieved_rps": self.answered_rps}


async def get_ok(client: httpx.AsyncClient, path: str) -> None:
    """GET ``path``; BenchError unless it answers 200 (a benchmark with errors measures nothing)."""
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        raise BenchError(f"GET {path} failed: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise BenchError(f"GET {path} answered HTTP {response.status_code}: {response.text[:300]}")


async def closed_loop(
    client: httpx.AsyncClient, path: str, *, n: int, concurrency: int, server_pid: int
) -> ClosedLoopResult:
    """Send ``n`` GETs from ``concurrency`` workers; per-request latency and the total time."""
    latencies: list[float] = []
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            await get_ok(client, path)
            latencies.append(time.perf_counter() - started)

    meter = _CpuMeter(server_pid)
    await _all(worker() for _ in range(concurrency))
    wall_s, cpu = meter.stop()
    return ClosedLoopResult(
        concurrency=concurrency, latency=Summary.of(latencies), wall_s=wall_s, cpu=cpu
    )


async def open_loop(
    client: httpx.AsyncClient,
    path: str,
    *,
    n: int,
    rate_rps: float,
    server_pid: int,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> OpenLoopResult:
    """Send ``n`` GETs at ``rate_rps``; latency counted from each request's scheduled time."""
    latencies = [0.0] * n
    in_flight = asyncio.Semaphore(max_in_flight)
    meter = _CpuMeter(server_pid)
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        scheduled = start + i / rate_rps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with in_flight:
            await get_ok(client, path)
        latencies[i] = time.perf_counter() - scheduled

    await _all(one(i) for i in range(n))
    wall_s, cpu = meter.stop()
    return OpenLoopResult(
        target_rps=rate_rps, latency=Summary.of(latencies), wall_s=wall_s - 0.05, cpu=cpu
    )


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``coros`` together; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
