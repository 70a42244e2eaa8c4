"""``hearth bench auth``: the controller's own overhead in a real auth flow.

A real controller (``hearth serve`` in its own process, scratch state dir, SQLite) runs real
flows against a real OAuth server (node + the test oidc-provider server) with a real Browser VM;
the bench plays the user over the Browser VM's DevTools (``hearth.bench.signin``).

Each flow is timed on one clock (the host's wall clock): the bench notes when it sent
``POST /api/auth/start`` and when the scripted user pressed the final submit; every other mark
is the timestamp of the controller's own log event (``auth_status`` per transition, the Browser
VM's ``vm_create_accepted`` and ``vm_ready``), so the bench's polling interval does not blur the
stages. Then

    overhead = total (start → completed) - user (awaiting_user → the user's final submit)

and the overhead splits into the stages in ``STAGES``. The Browser VM boots beside the CLI VM,
so the two VM starts overlap; each one's own start (``VM_STARTS``) is the yardstick the overhead
is held against. One warm-up flow runs first and is not
counted: it builds the CLI and Browser VM snapshot templates, as a controller's first flow does.
Every sample uses a new user, so each flow creates its CLI VM; that VM is destroyed after the
sample (the Browser VM is destroyed by the flow itself).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from hearth.auth.flow import DEVTOOLS_PORT
from hearth.bench.controller import ControllerProcess, start_controller
from hearth.bench.errors import BenchError
from hearth.bench.machine import MachineFacts
from hearth.bench.oidc import CLIENT_ID, TEST_LOGIN, TEST_PASSWORD, OidcServer
from hearth.bench.signin import CONSENT_SHOWN, SUBMIT_BUTTON, open_sign_in_page, submit_login
from hearth.bench.state import check_nothing_left, link_images
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.node.images import prepare_templates
from hearth.progress import Progress
from hearth.teardown import Teardown
from hearth.vm.accel import detect_accel

if TYPE_CHECKING:
    from hearth.bench.restarts import RestartsOptions

ENDED = ("completed", "failed", "timeout", "cancelled")
FLOW_DEADLINE_S = 900.0  # the warm-up flow boots both VMs cold under TCG
LOG_DEADLINE_S = 10.0  # a log line can trail the transition the API already shows
LOGIN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Stage:
    """A stretch of a flow between two marks."""

    name: str
    label: str
    start: str
    end: str


# The controller's stages, in order; together they are the overhead (total - user). The
# Browser VM boots beside the CLI VM, so only what is left of its start once the CLI VM is
# ready is a stage of its own; ``vms_ready`` is the later of the two VMs' readiness.
STAGES = (
    Stage("cli_vm", "CLI VM ready", "start", "cli_vm_ready"),
    Stage(
        "browser_vm_after_cli", "Browser VM ready, after the CLI VM", "cli_vm_ready", "vms_ready"
    ),
    Stage("awaiting_user", "awaiting_user (sign-in page opened)", "vms_ready", "awaiting_user"),
    Stage("capture", "capture (final submit → captured)", "submitted", "credentials_captured"),
    Stage("browser_teardown", "Browser VM teardown", "credentials_captured", "delivering"),
    Stage("delivery", "delivery into the CLI VM", "delivering", "completed"),
)
# Each VM's own start, overlapping in a flow: the yardstick the overhead is held against.
VM_STARTS = (
    Stage("cli_vm", "CLI VM start (start → ready)", "start", "cli_vm_ready"),
    Stage(
        "browser_vm",
        "Browser VM start (create → ready)",
        "browser_vm_created",
        "browser_vm_ready",
    ),
)
USER = Stage("user", "user (awaiting_user → final submit)", "awaiting_user", "submitted")
TOTAL = Stage("total", "total (start → completed)", "start", "completed")
# What a user waits for before they can sign in: the first login after setup against warm ones.
TO_SIGN_IN = Stage("to_sign_in", "start → awaiting_user", "start", "awaiting_user")
# Inside the user's time: how long the user waited for each page in the Browser VM.
USER_DETAIL = (
    Stage("login_page_shown", "sign-in form on screen", "awaiting_user", "login_shown"),
    Stage("consent_page_shown", "consent page on screen", "login_submitted", "consent_shown"),
)
# Marks the controller logs, per session: event, and the status for ``auth_status``.
_STATUS_MARKS = ("cli_vm_ready", "awaiting_user", "credentials_captured", "delivering", "completed")


@dataclass(frozen=True, kw_only=True)
class AuthBenchOptions:
    """How many flows, where, which images and which OAuth server."""

    n: int
    state_dir: Path
    cli_image: ImageDir
    browser_image: ImageDir
    oidc_server_dir: Path
    # Snapshot templates to use and keep (a controller's HEARTH_TEMPLATE_DIR); None: built
    # afresh under the state dir.
    template_dir: Path | None = None
    poll_s: float = 0.25  # how often the scripted user and the bench look


@dataclass(frozen=True, kw_only=True)
class FlowSample:
    """One completed flow: its marks (epoch seconds) and how each VM started."""

    user_id: str
    session_id: str
    marks: dict[str, float]
    cli_boot_mode: str
    browser_boot_mode: str
    templates_built: int  # snapshot templates the controller built during this flow

    def seconds(self, stage: Stage) -> float:
        """The duration of ``stage`` in this flow."""
        return self.marks[stage.end] - self.marks[stage.start]

    @property
    def overhead_s(self) -> float:
        """Total minus the user's time."""
        return self.seconds(TOTAL) - self.seconds(USER)

    def to_dict(self) -> dict[str, object]:
        """The JSON shape."""
        doc: dict[str, object] = {
            "user_id": self.user_id,
            "session_id": self.session_id,
            "cli_vm_boot_mode": self.cli_boot_mode,
            "browser_vm_boot_mode": self.browser_boot_mode,
            "total_s": self.seconds(TOTAL),
            "user_s": self.seconds(USER),
            "overhead_s": self.overhead_s,
            "stages_s": {s.name: self.seconds(s) for s in STAGES},
            "vm_starts_s": {s.name: self.seconds(s) for s in VM_STARTS},
            "user_detail_s": {s.name: self.seconds(s) for s in USER_DETAIL},
        }
        if self.templates_built:  # the warm-up's; a measured flow should build none
            doc["templates_built"] = self.templates_built
        return doc


@dataclass(kw_only=True)
class AuthBenchResult:
    """Every flow of one ``hearth bench auth`` run."""

    options: AuthBenchOptions
    machine: MachineFacts
    issuer: str = ""
    warmup: FlowSample | None = None
    samples: list[FlowSample] = field(default_factory=list)


async def run_auth_bench(options: AuthBenchOptions, *, progress: Progress) -> AuthBenchResult:
    """Start the OAuth server, prepare the templates as setup does, start a controller, run the
    first login (not in the overhead figures: it is measured against the warm ones), then ``n``
    measured flows."""
    if options.n < 1:
        raise BenchError("n must be at least 1")
    for image in (options.cli_image, options.browser_image):
        if image.manifest is None or not image.manifest.files_present(image.path):
            raise BenchError(f"{image.path} holds no built image")
    result = AuthBenchResult(options=options, machine=MachineFacts.collect(detect_accel()))
    state = options.state_dir / "controller"
    async with Teardown(error=BenchError) as teardown:
        oidc = await login_world(options, state, teardown, progress)
        result.issuer = oidc.issuer
        with progress.phase("templates", "as setup (hearth image build) prepares them"):
            settings = Settings.from_env(
                {"HEARTH_STATE_DIR": str(state), **template_env(options.template_dir)}
            )
            for image_path in dict.fromkeys((options.cli_image.path, options.browser_image.path)):
                for name, outcome in await prepare_templates(settings, image_path):
                    if not outcome.startswith("ready"):
                        raise BenchError(f"template {name} was not prepared: {outcome}")
        controller = await start_controller(
            state_dir=state,
            env=controller_env(oidc, options.template_dir),
            teardown=teardown,
            progress=progress,
        )
        with progress.phase("controller warm-up", "what its start prepares, as after setup"):
            await controller.wait_warm()
        flows = FlowRunner(controller=controller, oidc=oidc, poll_s=options.poll_s)
        with progress.phase("first login", "after setup: templates prepared, nothing warm"):
            result.warmup = await flows.run("hearth-bench-warmup")
        for i in range(1, options.n + 1):
            with progress.phase(f"flow {i}/{options.n}"):
                result.samples.append(await flows.run(f"hearth-bench-{i}"))
    return result


async def login_world(
    options: AuthBenchOptions | RestartsOptions, state: Path, teardown: Teardown, progress: Progress
) -> OidcServer:
    """The OAuth server started and the images linked into the controller's ``state`` dir, each
    undone by ``teardown``, which also checks, after the controller stopped, that no VM is left
    (push the controller after this)."""
    with progress.phase("oauth server", f"node server.mjs in {options.oidc_server_dir}"):
        oidc = await OidcServer.start(
            server_dir=options.oidc_server_dir, log=options.state_dir / "oidc-server.log"
        )
        teardown.push("stop the OAuth server", oidc.stop)
    link_images(state, {"cli": options.cli_image, "browser": options.browser_image})
    # Runs after the controller stopped (teardown is newest first).
    teardown.push("check that no VM is left", lambda: check_nothing_left(state))
    return oidc


class FlowRunner:
    """Runs one auth flow end to end as a user would, and reads its marks from the log."""

    def __init__(self, *, controller: ControllerProcess, oidc: OidcServer, poll_s: float) -> None:
        self.controller = controller
        self.oidc = oidc
        self.poll_s = poll_s
        self._log_offset = 0

    async def run(self, user_id: str) -> FlowSample:
        """Start a login for ``user_id``, sign in, wait for completion, destroy the CLI VM."""
        headers = {"Authorization": f"Bearer {self.controller.admin_key}"}
        async with httpx.AsyncClient(
            base_url=self.controller.url, headers=headers, timeout=60
        ) as api:
            marks: dict[str, float] = {"start": time.time()}
            response = await api.post(
                "/api/auth/start", json={"userId": user_id, "provider": "oidc"}
            )
            if response.status_code != 202:
                raise BenchError(f"POST /api/auth/start answered HTTP {response.status_code}")
            session_id = str(response.json()["sessionId"])
            cli_vm_id: str | None = None
            try:
                waiting = await self._wait_status(api, session_id, "awaiting_user")
                cli_vm_id = waiting["vm_id"]
                browser_vm_id = str(waiting["browser_vm_id"])
                await self._play_user(browser_vm_id, marks)
                done = await self._wait_status(api, session_id, "completed")
                cli_vm_id = done["vm_id"]
            except BaseException:
                await api.post(f"/api/auth/session/{session_id}/cancel")
                raise
            finally:
                if cli_vm_id:
                    await api.delete(f"/api/vms/{cli_vm_id}")
        return await self._sample(user_id, session_id, str(cli_vm_id), browser_vm_id, marks)

    async def _play_user(self, browser_vm_id: str, marks: dict[str, float]) -> None:
        """Sign in on the provider's page in the Browser VM and approve the consent page."""
        port = self._devtools_port(browser_vm_id)
        page = await open_sign_in_page(port, self.oidc.issuer, poll_s=self.poll_s)
        try:
            marks["login_shown"] = time.time()
            marks["login_submitted"] = time.time()
            await submit_login(page, login=TEST_LOGIN, password=TEST_PASSWORD)
            await page.wait_for(CONSENT_SHOWN, poll_s=self.poll_s)
            marks["consent_shown"] = time.time()
            # The mark precedes the click, so the click's round trip counts as overhead.
            marks["submitted"] = time.time()
            await page.click(SUBMIT_BUTTON)
        finally:
            await page.close()

    def _devtools_port(self, vm_id: str) -> int:
        """The loopback port QEMU forwards to the Browser VM's DevTools (from the VM's record)."""
        record = self.controller.state_dir / "vms" / vm_id / "vm.json"
        try:
            ports = json.loads(record.read_text()).get("ports") or {}
            return int(ports[str(DEVTOOLS_PORT)])
        except (OSError, ValueError, KeyError) as exc:
            raise BenchError(f"no DevTools port for Browser VM {vm_id} in {record}") from exc

    async def _wait_status(
        self, api: httpx.AsyncClient, session_id: str, wanted: str
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + FLOW_DEADLINE_S
        while True:
            response = await api.get(f"/api/auth/session/{session_id}")
            if response.status_code != 200:
                raise BenchError(f"GET the session answered HTTP {response.status_code}")
            session: dict[str, Any] = response.json()["session"]
            status = session["status"]
            if status == wanted:
                return session
            if status in ENDED:
                raise BenchError(
                    f"auth session {session_id} ended {status} waiting for {wanted}: "
                    f"{session.get('error_message')}\n{self.controller.log_tail()}"
                )
            if asyncio.get_running_loop().time() > deadline:
                raise BenchError(f"auth session {session_id} stuck at {status}")
            await asyncio.sleep(self.poll_s)

    async def _sample(
        self,
        user_id: str,
        session_id: str,
        cli_vm_id: str,
        browser_vm_id: str,
        marks: dict[str, float],
    ) -> FlowSample:
        """Add the controller's logged marks to the bench's own and check their order."""
        deadline = asyncio.get_running_loop().time() + LOG_DEADLINE_S
        while True:
            events, end = _read_events(self.controller.log, self._log_offset)
            found = _logged_marks(events, session_id, cli_vm_id, browser_vm_id)
            wanted = (*_STATUS_MARKS, "browser_vm_created", "browser_vm_ready")
            missing = [m for m in wanted if m not in found[0]]
            if not missing:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise BenchError(
                    f"the controller's log has no {', '.join(missing)} for {session_id}"
                )
            await asyncio.sleep(0.2)
        self._log_offset = end
        logged, boot_modes, templates = found
        marks.update(logged)
        marks["vms_ready"] = max(marks["cli_vm_ready"], marks["browser_vm_ready"])
        orders = [
            ["start", "cli_vm_ready", "vms_ready", "awaiting_user", "login_shown"],
            ["start", "browser_vm_created", "browser_vm_ready", "vms_ready"],
            ["awaiting_user", "login_shown", "login_submitted", "consent_shown", "submitted"],
            ["submitted", "credentials_captured", "delivering", "completed"],
        ]
        for order in orders:
            for before, after in itertools.pairwise(order):
                if marks[after] < marks[before]:
                    raise BenchError(f"{session_id}: {after} is logged before {before}")
        return FlowSample(
            user_id=user_id,
            session_id=session_id,
            marks=marks,
            cli_boot_mode=boot_modes.get(cli_vm_id, "unknown"),
            browser_boot_mode=boot_modes.get(browser_vm_id, "unknown"),
            templates_built=templates,
        )


def _read_events(log: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The controller's JSON log events from byte ``offset`` on, and the offset after them."""
    with log.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    events = []
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # uvicorn's and the CLI's own lines are not JSON
        if isinstance(event, dict) and "event" in event and "timestamp" in event:
            events.append(event)
    return events, offset + len(complete)


def _logged_marks(
    events: list[dict[str, Any]], session_id: str, cli_vm_id: str, browser_vm_id: str
) -> tuple[dict[str, float], dict[str, str], int]:
    """The session's transitions and the Browser VM's create and readiness (epoch seconds),
    the VMs' boot modes, and how many templates were built."""
    marks: dict[str, float] = {}
    boot_modes: dict[str, str] = {}
    templates = 0
    for event in events:
        at = datetime.fromisoformat(str(event["timestamp"])).timestamp()
        name = event["event"]
        if name == "auth_status" and event.get("session_id") == session_id:
            if event.get("status") in _STATUS_MARKS:
                marks.setdefault(str(event["status"]), at)
        elif name == "vm_create_accepted" and event.get("vm_id") == browser_vm_id:
            marks["browser_vm_created"] = at
        elif name == "vm_ready" and event.get("vm_id") in (cli_vm_id, browser_vm_id):
            boot_modes[str(event["vm_id"])] = str(event.get("boot_mode", "unknown"))
            if event["vm_id"] == browser_vm_id:
                marks["browser_vm_ready"] = at
        elif name == "template_ready":
            templates += 1
    return marks, boot_modes, templates


def template_env(template_dir: Path | None) -> dict[str, str]:
    """``HEARTH_TEMPLATE_DIR`` for ``template_dir``; nothing (under the state dir) for None."""
    return {} if template_dir is None else {"HEARTH_TEMPLATE_DIR": str(template_dir)}


def controller_env(oidc: OidcServer, template_dir: Path | None) -> dict[str, str]:
    """The controller's settings: the OAuth server reachable from Browser VMs, no warm pools,
    the templates in ``template_dir`` (None: under its state dir)."""
    return {
        **template_env(template_dir),
        "HEARTH_OIDC_ISSUER": oidc.issuer,
        "HEARTH_OIDC_UPSTREAM_PORT": str(oidc.port),
        "HEARTH_OIDC_CLIENT_ID": CLIENT_ID,
        "HEARTH_LOGIN_TIMEOUT_S": f"{LOGIN_TIMEOUT_S:.0f}",
        "HEARTH_POOL_CLI": "0",
        "HEARTH_POOL_BROWSER": "0",
        # The bench plays the user by typing into the login page over DevTools.
        "HEARTH_BROWSER_DEVTOOLS": "1",
    }
