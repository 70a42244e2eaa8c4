"""``hearth bench restarts``: logins that outlive their controller, counted.

For each point a restart can meet a login at, ``n`` logins are run end to end against a real
controller, a real OAuth server and real VMs: while a login is in that stage the controller is
stopped at a random moment (``kill -9``; SIGTERM, as an upgrade does, between the user's two
form pages) and started again on the same state dir; the scripted user then signs in (or, for
``after_consent``, has just signed in: the stop meets the capture, the Browser VM's end or the
delivery). A login
survived when it ends ``completed`` with its Browser VM destroyed. Target: every one survives.
The bench also says where each stop really landed (a stage can end before its random moment
comes: that stop is counted in the stage it met, and said so).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from hearth.auth.flow import DEVTOOLS_PORT
from hearth.bench.auth import FLOW_DEADLINE_S, controller_env, login_world
from hearth.bench.controller import ControllerProcess
from hearth.bench.errors import BenchError
from hearth.bench.machine import MachineFacts
from hearth.bench.oidc import TEST_LOGIN, TEST_PASSWORD, OidcServer
from hearth.bench.report import Target, document_head, machine_table, targets_table
from hearth.bench.signin import CONSENT_SHOWN, SUBMIT_BUTTON, open_sign_in_page, submit_login
from hearth.images.manifest import ImageDir
from hearth.progress import Progress
from hearth.teardown import Teardown
from hearth.vm.accel import detect_accel
from hearth.vm.qemu.records import read_record

# Where a stop meets the login, how, and how long into the stage it may come (a random moment
# in [0, spread)): VM starts last about a second here, the user's page as long as the user waits.
# ``after_consent`` comes that long after the user's last click: the capture, the Browser VM's
# end (``credentials_captured``) and the delivery (``delivering``) take about a second in all.
POINTS: dict[str, tuple[str, float]] = {
    "cli_vm_starting": ("kill9", 0.5),
    "browser_vm_starting": ("kill9", 0.5),
    "awaiting_user": ("kill9", 3.0),
    "between_pages": ("sigterm", 0.0),
    "after_consent": ("kill9", 1.5),
}
_ENDED = ("completed", "failed", "timeout", "cancelled")


@dataclass(frozen=True, kw_only=True)
class RestartsOptions:
    """How many logins per point, where, which images and which OAuth server."""

    n: int
    state_dir: Path
    cli_image: ImageDir
    browser_image: ImageDir
    oidc_server_dir: Path
    template_dir: Path | None = None  # as AuthBenchOptions'
    points: tuple[str, ...] = tuple(POINTS)
    seed: int | None = None


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One login stopped at ``point``: where the stop landed, and how the login ended."""

    point: str
    how: str
    landed: str  # the session's status when the controller was stopped
    delay_s: float
    status: str
    error: str | None
    seconds: float

    @property
    def survived(self) -> bool:
        """Completed after the restart."""
        return self.status == "completed"

    def to_dict(self) -> dict[str, object]:
        """The JSON shape."""
        return {**self.__dict__, "survived": self.survived}


@dataclass(kw_only=True)
class RestartsResult:
    """The outcomes, per point in order."""

    options: RestartsOptions
    machine: MachineFacts
    outcomes: list[Outcome] = field(default_factory=list)

    def survived(self) -> tuple[int, int]:
        """(survived, run) over every point."""
        return sum(o.survived for o in self.outcomes), len(self.outcomes)


async def run_restarts_bench(options: RestartsOptions, *, progress: Progress) -> RestartsResult:
    """Start the OAuth server and a controller, then stop and restart it ``n`` times per point."""
    if options.n < 1:
        raise BenchError("n must be at least 1")
    unknown = [p for p in options.points if p not in POINTS]
    if unknown:
        raise BenchError(f"unknown restart points {unknown}; known: {', '.join(POINTS)}")
    chance = random.Random(options.seed)  # noqa: S311 - when to stop, not a secret
    result = RestartsResult(options=options, machine=MachineFacts.collect(detect_accel()))
    state = options.state_dir / "controller"
    async with Teardown(error=BenchError) as teardown:
        oidc = await login_world(options, state, teardown, progress)
        logins = Logins(state=state, oidc=oidc, template_dir=options.template_dir)
        # Through a controller that destroys every VM it runs as it stops.
        teardown.push("destroy the VMs, stop the controller", logins.stop_destroying)
        with progress.phase("controller", "start hearth serve"):
            await logins.start()
        for point in options.points:
            how, spread = POINTS[point]
            for i in range(1, options.n + 1):
                with progress.phase(f"{point} {i}/{options.n}", f"{how}, then sign in"):
                    delay = chance.uniform(0, spread)
                    outcome = await logins.run(f"restart-{point}-{i}", point, how, delay)
                    result.outcomes.append(outcome)
    return result


class Logins:
    """A controller that is stopped and started again under logins, and its scripted user."""

    def __init__(self, *, state: Path, oidc: OidcServer, template_dir: Path | None) -> None:
        self.state = state
        self.oidc = oidc
        self.template_dir = template_dir
        self.controller: ControllerProcess | None = None

    async def start(self, *, destroy_on_exit: bool = False) -> None:
        """``hearth serve`` on the state dir (VMs outlive it unless ``destroy_on_exit``)."""
        self.controller = await ControllerProcess.start(
            state_dir=self.state,
            env=controller_env(self.oidc, self.template_dir),
            destroy_on_exit=destroy_on_exit,
        )

    async def stop_destroying(self) -> None:
        """Stop the controller, then start and stop one that destroys every VM it finds."""
        if self.controller is not None:
            await self.controller.stop()
        await self.start(destroy_on_exit=True)
        assert self.controller is not None
        await self.controller.stop()
        self.controller = None

    async def _restart(self, how: str) -> None:
        assert self.controller is not None
        if how == "kill9":
            self.controller.process.kill()
            await self.controller.process.wait()
        else:
            await self.controller.stop()
        await self.start()

    def _api(self) -> httpx.AsyncClient:
        assert self.controller is not None
        headers = {"Authorization": f"Bearer {self.controller.admin_key}"}
        return httpx.AsyncClient(base_url=self.controller.url, headers=headers, timeout=60)

    async def run(self, user_id: str, point: str, how: str, delay_s: float) -> Outcome:
        """One login, the controller stopped at ``point`` after ``delay_s`` in it."""
        started = time.monotonic()
        landed = point
        async with self._api() as api:
            response = await api.post(
                "/api/auth/start", json={"userId": user_id, "provider": "oidc"}
            )
            if response.status_code != 202:
                raise BenchError(f"POST /api/auth/start answered HTTP {response.status_code}")
            session_id = str(response.json()["sessionId"])
        if point not in ("between_pages", "after_consent"):
            async with self._api() as api:
                await self._until(api, session_id, point, poll_s=0.02)
                await asyncio.sleep(delay_s)
                landed = await self._status(api, session_id)
            await self._restart(how)
        try:
            async with self._api() as api:
                waiting = await self._until(api, session_id, "awaiting_user", poll_s=0.25)
            restart = (lambda: self._restart(how)) if point == "between_pages" else None
            await self._sign_in(str(waiting["browser_vm_id"]), restart)
            if point == "after_consent":
                await asyncio.sleep(delay_s)
                async with self._api() as api:
                    landed = await self._status(api, session_id)
                await self._restart(how)
            async with self._api() as api:
                done = await self._until(api, session_id, "completed", poll_s=0.25)
                await api.delete(f"/api/vms/{done['vm_id']}")
                browser = await api.get(f"/api/vms/{waiting['browser_vm_id']}")
                if browser.json().get("status") != "destroyed":
                    raise BenchError(f"the Browser VM of {session_id} was not destroyed")
        except BenchError as exc:
            async with self._api() as api:
                status = await self._status(api, session_id)
            return Outcome(
                point=point,
                how=how,
                landed=landed,
                delay_s=round(delay_s, 3),
                status=status,
                error=exc.message[:500],
                seconds=round(time.monotonic() - started, 3),
            )
        return Outcome(
            point=point,
            how=how,
            landed=landed,
            delay_s=round(delay_s, 3),
            status="completed",
            error=None,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _sign_in(
        self, browser_vm_id: str, between: Callable[[], Awaitable[None]] | None
    ) -> None:
        """Sign in on the provider's page in the Browser VM, ``between`` the two pages."""
        record = read_record(self.state / "vms" / browser_vm_id) or {}
        ports = record.get("ports") or {}
        if not isinstance(ports, dict) or str(DEVTOOLS_PORT) not in ports:
            raise BenchError(f"no DevTools port for Browser VM {browser_vm_id}")
        page = await open_sign_in_page(int(ports[str(DEVTOOLS_PORT)]), self.oidc.issuer)
        try:
            await submit_login(page, login=TEST_LOGIN, password=TEST_PASSWORD)
            await page.wait_for(CONSENT_SHOWN, poll_s=0.1)
            if between is not None:
                await between()
            await page.click(SUBMIT_BUTTON)
        finally:
            await page.close()

    async def _status(self, api: httpx.AsyncClient, session_id: str) -> str:
        return str((await self._session(api, session_id))["status"])

    async def _session(self, api: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
        response = await api.get(f"/api/auth/session/{session_id}")
        if response.status_code != 200:
            raise BenchError(f"GET the session answered HTTP {response.status_code}")
        session: dict[str, Any] = response.json()["session"]
        return session

    async def _until(
        self, api: httpx.AsyncClient, session_id: str, wanted: str, *, poll_s: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + FLOW_DEADLINE_S
        while True:
            session = await self._session(api, session_id)
            if session["status"] == wanted:
                return session
            if session["status"] in _ENDED:
                raise BenchError(
                    f"{session_id} ended {session['status']} waiting for {wanted}: "
                    f"{session.get('error_message')}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"{session_id} stuck at {session['status']}")
            await asyncio.sleep(poll_s)


def restarts_target(result: RestartsResult) -> Target:
    """Every login survives its controller's restart."""
    survived, run = result.survived()
    return Target(
        name="logins_survive_restarts",
        goal="every login survives a controller restart (kill -9 or SIGTERM) at any stage",
        measured=f"{survived} of {run} completed",
        met=survived == run,
    )


def restarts_tables(result: RestartsResult) -> list[Table]:
    """Per point: runs, survivors, where the stops landed; then the target and the machine."""
    table = Table(title="logins across a controller restart")
    for column in ("stopped at", "how", "runs", "survived", "stops landed in", "failures"):
        table.add_column(column)
    for point in result.options.points:
        outcomes = [o for o in result.outcomes if o.point == point]
        landed = sorted({o.landed for o in outcomes})
        errors = "; ".join(o.error or "" for o in outcomes if not o.survived)[:200]
        table.add_row(
            point,
            POINTS[point][0],
            str(len(outcomes)),
            str(sum(o.survived for o in outcomes)),
            ", ".join(landed),
            errors or "-",
        )
    return [table, targets_table([restarts_target(result)]), machine_table(result.machine)]


def restarts_document(result: RestartsResult, *, command: str) -> dict[str, object]:
    """The JSON document."""
    return {
        **document_head("restarts", command=command, machine=result.machine),
        "n": result.options.n,
        "points": list(result.options.points),
        "outcomes": [o.to_dict() for o in result.outcomes],
        "targets": [restarts_target(result).to_dict()],
    }
