"""``hearth bench api``: latency and throughput of the controller's read routes, per database.

For each database (SQLite always; PostgreSQL when a server URL is given) a real controller runs
as ``hearth serve`` in its own process on a scratch state dir (and, for PostgreSQL, a scratch
database). The bench seeds one user, that user's API key (minted through ``POST /api/keys``) and
one ready VM row, then drives ``GET /api/vms/{id}`` with the user's key:

* warm-up: ``warmup`` requests, not counted;
* closed loop: ``n`` requests from ``concurrency`` workers → throughput and p50/p99;
* open loop: ``n`` requests on a fixed schedule of ``rate_rps`` over ``MAX_IN_FLIGHT``
  connections → p50/p99 at that rate, each latency counted from its scheduled send time.

Each loop has an HTTP client of its own, sized to it, so one phase's pool cannot slow the next.

``GET /api/auth/session/{id}`` is measured the same way once the app has that route; until then
the report carries a note saying it was skipped.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hearth.api.app import create_app
from hearth.auth.states import AuthStatus
from hearth.bench.controller import ControllerProcess
from hearth.bench.errors import BenchError
from hearth.bench.load import (
    MAX_IN_FLIGHT,
    ClosedLoopResult,
    OpenLoopResult,
    closed_loop,
    open_loop,
)
from hearth.bench.machine import MachineFacts
from hearth.bench.postgres import ScratchDatabase
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.progress import Progress
from hearth.store import AuthSessionRecord, Store, VmRecord
from hearth.teardown import Teardown
from hearth.vm.accel import detect_accel
from hearth.vm.host import new_vm_id
from hearth.vm.types import BootMode, VmState, VmType
from hearth_agent.wire import Provider

BENCH_USER = "hearth-bench"
VM_ROUTE = "/api/vms/{vm_id}"
AUTH_SESSION_PREFIX = "/api/auth/session"
_PATH_PARAM = re.compile(r"\{[^}]+\}")


@dataclass(frozen=True, kw_only=True)
class ApiBenchOptions:
    """Requests per phase, the closed loop's concurrency, the open loop's rate, the databases."""

    n: int
    state_dir: Path
    concurrency: int = 10
    rate_rps: float = 500.0
    warmup: int = 200
    postgres_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class EndpointResult:
    """One route on one database, under both kinds of load."""

    route: str
    closed: ClosedLoopResult
    open: OpenLoopResult

    def to_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return {
            "route": self.route,
            "closed_loop": self.closed.to_dict(),
            "open_loop": self.open.to_dict(),
        }


@dataclass(kw_only=True)
class DatabaseResult:
    """Every route measured on one database."""

    name: str  # "sqlite" or "postgresql"
    version: str
    endpoints: dict[str, EndpointResult] = field(default_factory=dict)


@dataclass(kw_only=True)
class ApiBenchResult:
    """Every measurement of one ``hearth bench api`` run, and what was skipped and why."""

    options: ApiBenchOptions
    machine: MachineFacts
    databases: list[DatabaseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def auth_session_route() -> str | None:
    """The app's ``GET /api/auth/session/{…}`` route template, if the auth flow has one yet.

    Read from the OpenAPI document: FastAPI keeps included routers nested in ``app.routes``.
    """
    app = create_app(Settings(state_dir=Path("/nonexistent/hearth-bench")))
    paths: dict[str, dict[str, object]] = app.openapi().get("paths", {})
    for path, operations in sorted(paths.items()):
        one_session = path.startswith(f"{AUTH_SESSION_PREFIX}/{{") and path.count("/") == 4
        if one_session and "get" in operations:
            return path
    return None


async def run_api_bench(options: ApiBenchOptions, *, progress: Progress) -> ApiBenchResult:
    """Measure on SQLite, then on PostgreSQL when a server URL was given."""
    if options.n < 1 or options.concurrency < 1 or options.rate_rps <= 0:
        raise BenchError("n and concurrency must be at least 1, and the rate positive")
    result = ApiBenchResult(options=options, machine=MachineFacts.collect(detect_accel()))
    session_route = auth_session_route()
    if session_route is None:
        result.notes.append(
            f"GET {AUTH_SESSION_PREFIX}/{{id}} skipped: the app has no such route yet "
            "(the auth flow is not implemented)"
        )
    sqlite_url = f"sqlite+aiosqlite:///{options.state_dir / 'sqlite' / 'hearth.db'}"
    result.databases.append(
        await _bench_database(
            "sqlite", sqlite_url, sqlite3.sqlite_version, options, session_route, result, progress
        )
    )
    if options.postgres_url is None:
        result.notes.append(
            "PostgreSQL skipped: no server URL (give --database-url or set "
            "HEARTH_BENCH_DATABASE_URL; e.g. the one `bash scripts/postgres.sh` prints)"
        )
        return result
    scratch = ScratchDatabase(options.postgres_url)
    async with Teardown(error=BenchError) as teardown:
        teardown.push(f"drop database {scratch.name}", scratch.drop)
        with progress.phase("postgresql", f"scratch database {scratch.name}"):
            await scratch.create()
        result.databases.append(
            await _bench_database(
                "postgresql", scratch.url, scratch.version, options, session_route, result, progress
            )
        )
    return result


async def _bench_database(
    name: str,
    url: str,
    version: str,
    options: ApiBenchOptions,
    session_route: str | None,
    result: ApiBenchResult,
    progress: Progress,
) -> DatabaseResult:
    measured = DatabaseResult(name=name, version=version)
    async with Teardown(error=BenchError) as teardown:
        with progress.phase(name, "start the controller (hearth serve)"):
            controller = await ControllerProcess.start(
                state_dir=options.state_dir / name, database_url=url
            )
            teardown.push(f"stop the {name} controller", controller.stop)
        key = await controller.mint_user_key(BENCH_USER)
        vm_id = await _seed_vm(url)
        routes = {VM_ROUTE: vm_id}
        if session_route is not None:
            try:
                routes[session_route] = await _seed_auth_session(url, vm_id)
            except HearthError as exc:
                result.notes.append(f"GET {session_route} skipped on {name}: {exc.message}")
        for route, item_id in routes.items():
            path = _PATH_PARAM.sub(item_id, route, count=1)
            measured.endpoints[route] = await _bench_route(
                controller, key, name, route, path, options, progress
            )
    return measured


async def _bench_route(
    controller: ControllerProcess,
    key: str,
    database: str,
    route: str,
    path: str,
    options: ApiBenchOptions,
    progress: Progress,
) -> EndpointResult:
    """Warm up, then the closed loop and the open loop, each on a client of its own size."""
    label = f"{database} GET {route}"
    pid = controller.process.pid
    workers = options.concurrency
    async with _client(controller, key, connections=workers) as client:
        with progress.phase(label, f"warm-up, {options.warmup} requests"):
            await closed_loop(client, path, n=options.warmup, concurrency=workers, server_pid=pid)
        with progress.phase(label, f"{options.n} requests, {workers} at a time"):
            closed = await closed_loop(
                client, path, n=options.n, concurrency=workers, server_pid=pid
            )
    async with _client(controller, key, connections=MAX_IN_FLIGHT) as client:
        with progress.phase(label, f"{options.n} requests at {options.rate_rps:.0f}/s"):
            await closed_loop(
                client, path, n=MAX_IN_FLIGHT, concurrency=MAX_IN_FLIGHT, server_pid=pid
            )
            opened = await open_loop(
                client, path, n=options.n, rate_rps=options.rate_rps, server_pid=pid
            )
    return EndpointResult(route=route, closed=closed, open=opened)


def _client(controller: ControllerProcess, key: str, *, connections: int) -> httpx.AsyncClient:
    """An HTTP client with ``key`` as bearer and a pool of exactly ``connections``."""
    return httpx.AsyncClient(
        base_url=controller.url,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=60,
    )


async def _seed_vm(url: str) -> str:
    """One ready VM row of the bench user, written straight into the store (no VM boots)."""
    store = await Store.open(url)
    try:
        await store.users.ensure(BENCH_USER)
        record = await store.vms.insert(
            VmRecord(
                id=new_vm_id(),
                user_id=BENCH_USER,
                vm_type=VmType.CLI,
                backend="qemu",
                vcpus=1,
                mem_mib=512,
            )
        )
        await store.vms.transition(record.id, VmState.CREATING, VmState.BOOTING)
        await store.vms.transition(
            record.id,
            VmState.BOOTING,
            VmState.READY,
            agent_url="http://127.0.0.1:9",
            boot_mode=BootMode.RESTORE,
            disk_bytes=4096,
        )
        return record.id
    finally:
        await store.close()


async def _seed_auth_session(url: str, vm_id: str) -> str:
    """One auth session of the bench user, mid-login on the seeded VM (as clients poll it).

    Written straight into the store after the controller started, so no flow runs for it.
    """
    store = await Store.open(url)
    try:
        record = await store.auth_sessions.insert(
            AuthSessionRecord(
                id=str(uuid.uuid4()),
                user_id=BENCH_USER,
                provider=Provider.CODEX,
                status=AuthStatus.AWAITING_USER,
                vm_id=vm_id,
            )
        )
        return record.id
    finally:
        await store.close()
