"""Auth flow paths that need a broken image or a killed controller: none gets stuck, and a
login outlives a controller killed while its user signs in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from hearth.auth.states import AuthStatus
from hearth.bench.signin import open_sign_in_page, submit_consent, submit_login
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.vm.qemu.records import read_record
from tests.e2e.flow_fixtures import *  # noqa: F403
from tests.e2e.flow_fixtures import CLIENT_ID, E2eOidc
from tests.e2e.test_auth_flow import DEVTOOLS_PORT, ENDED, start, wait_status
from tests.integration.store_fixtures import PostgresServer
from tests.vm.api_fixtures import serve_app
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.conftest import qemu_pids_under
from tests.vm.server_fixtures import *  # noqa: F403
from tests.vm.server_fixtures import Server

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def agentless_copy(image: ImageDir, into: Path) -> ImageDir:
    """A copy of the image whose agent cannot start (its entry module is gone)."""
    into.mkdir()
    for item in image.path.iterdir():
        if item.name == "rootfs.ext4":
            subprocess.run(["cp", "--sparse=always", item, into / item.name], check=True)
        else:
            shutil.copy2(item, into / item.name)
    subprocess.run(
        [
            "debugfs",
            "-w",
            "-R",
            "rm /opt/hearth/agent/hearth_agent/__main__.py",
            into / "rootfs.ext4",
        ],
        check=True,
        capture_output=True,
    )
    return ImageDir(into)


async def test_cli_vm_without_agent_fails_naming_the_vm_and_the_probe_error(
    minimal_image: ImageDir,
    browser_image: ImageDir,
    e2e_oidc: E2eOidc,
    tmp_path: Path,
) -> None:
    broken = agentless_copy(minimal_image, tmp_path / "agentless")
    settings = Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_OIDC_ISSUER": e2e_oidc.issuer,
            "HEARTH_OIDC_UPSTREAM_PORT": str(e2e_oidc.port),
            "HEARTH_OIDC_CLIENT_ID": CLIENT_ID,
        }
    )
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        cli_image=broken,
        browser_image=browser_image,
        template_dir=tmp_path / "templates",
        cold_deadline_s=15,
        destroy_on_exit=True,
    ):
        session_id = await start(api, "erin")
        ended = await wait_status(api, session_id, ENDED, timeout_s=300)
        assert ended["status"] == "failed"
        # The Browser VM that booted beside the CLI VM went with the session (it was never
        # shown to the user: the CLI VM did not prove healthy).
        assert ended["login_url"] is None
        if ended["browser_vm_id"] is not None:
            browser = await api.ctl.store.vms.get(ended["browser_vm_id"])
            assert browser.status.value == "destroyed"
        message = ended["error_message"]
        assert "not ready after 15000 ms" in message
        assert "vm-" in message
        # The kind of failure the probe met, in words that carry no address.
        kinds = ("refused", "reset", "timed out", "could not connect", "no valid HTTP", "broke off")
        assert any(kind in message for kind in kinds), message
        assert "http://" not in message
    assert qemu_pids_under(tmp_path) == []


# Where the controller is stopped, and how: kill -9 in each stage, and SIGTERM (an upgrade)
# between the user's two form pages. The two stages after the sign-in last milliseconds, so the
# test holds the login in them as the real world can: the database is slow to give up the
# Browser VM's row (its destroy waits), or the CLI VM stalls (its QEMU stopped) during delivery.
# So may ``browser_vm_starting`` (its VM boots, and its login starts, beside the CLI VM): there
# the Browser VM stalls (its QEMU stopped).
STOPS = [
    ("cli_vm_starting", "kill9"),
    ("browser_vm_starting", "kill9"),
    ("awaiting_user", "kill9"),
    ("between_pages", "sigterm"),
    ("credentials_captured", "kill9"),
    ("delivering", "kill9"),
]
AFTER_SIGN_IN = ("credentials_captured", "delivering")
HELD_S = 1.0  # how long a held login is seen staying in its stage before the controller dies


@pytest.mark.parametrize(("stage", "how"), STOPS, ids=[f"{s}-{h}" for s, h in STOPS])
async def test_a_controller_stopped_mid_login_goes_on_after_restart_and_completes(
    server: Server,
    minimal_image: ImageDir,
    browser_image: ImageDir,
    e2e_oidc: E2eOidc,
    vm_state_dir: Path,
    tmp_path: Path,
    stage: str,
    how: str,
    request: pytest.FixtureRequest,
) -> None:
    """A real ``hearth serve`` stopped while a login is in ``stage``: the next controller picks
    the session up where it was (a VM that was booting started again; a running Browser VM, its
    agent, the login in it and the user's page adopted; the login's egress path reopened on the
    port that VM's QEMU dials; captured credentials delivered, again if need be: the sha256
    check decides), and the user's sign-in completes it; nothing is left but the user's CLI VM,
    and nothing at all once that is destroyed."""
    state = tmp_path / "state"
    (state / "images" / "browser").symlink_to(browser_image.path)
    lock_conninfo = None
    if stage == "credentials_captured":  # a row lock needs PostgreSQL (CI has it)
        database: PostgresServer = request.getfixturevalue("postgres_server")
        url = database.create_database()

        def drop() -> None:
            server.stop()
            database.drop_database(str(url.database))

        request.addfinalizer(drop)
        server.env["HEARTH_DATABASE_URL"] = url.render_as_string(hide_password=False)
        lock_conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    server.env.update(
        {
            "HEARTH_TEMPLATE_DIR": str(vm_state_dir / "templates"),
            "HEARTH_OIDC_ISSUER": e2e_oidc.issuer,
            "HEARTH_OIDC_UPSTREAM_PORT": str(e2e_oidc.port),
            "HEARTH_OIDC_CLIENT_ID": CLIENT_ID,
            "HEARTH_BROWSER_DEVTOOLS": "1",  # the scripted user signs in through DevTools
        }
    )
    server.start()
    key = (state / "admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}

    def stop() -> None:
        if how == "kill9":
            server.kill9()
        else:
            assert server.stop() == 0

    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as api:
        started = await api.post("/api/auth/start", json={"userId": "frank", "provider": "oidc"})
        session_id = started.json()["sessionId"]
        if stage not in ("between_pages", *AFTER_SIGN_IN):
            async with contextlib.AsyncExitStack() as held_back:
                if stage == "browser_vm_starting":
                    await held_back.enter_async_context(_stalled_browser_vm(api, session_id, state))
                await _session_until(api, session_id, stage, poll_s=0.02)
                stop()
            server.start()
            after = (await api.get(f"/api/auth/session/{session_id}")).json()["session"]
            # Picked up at its stage (and maybe on from there already), never failed.
            assert after["status"] not in ENDED, after
            order = [s.value for s in AuthStatus]
            assert order.index(after["status"]) >= order.index(stage), after
        session = await _session_until(api, session_id, "awaiting_user")
        browser_vm_id = session["browser_vm_id"]
        record = read_record(state / "vms" / browser_vm_id)
        assert record is not None
        devtools_port = int((record.get("ports") or {})[str(DEVTOOLS_PORT)])
        page = await open_sign_in_page(devtools_port, e2e_oidc.issuer)
        with _held(stage, state, session, lock_conninfo) as release:
            try:
                await submit_login(page, login="alice", password="wonderland")
                if stage == "between_pages":
                    stop()
                    server.start()
                await submit_consent(page)
            finally:
                await page.close()
            if stage in AFTER_SIGN_IN:
                await _session_until(api, session_id, stage, poll_s=0.02)
                await asyncio.sleep(HELD_S)
                held = (await api.get(f"/api/auth/session/{session_id}")).json()["session"]
                assert held["status"] == stage, held
                stop()
                release()
                server.start()
        done = await _session_until(api, session_id, "completed")
        assert done["error_message"] is None
        assert done["browser_vm_id"] == browser_vm_id, "the Browser VM was replaced"
        browser_vm = (await api.get(f"/api/vms/{browser_vm_id}")).json()
        assert browser_vm["status"] == "destroyed"
        assert qemu_pids_under(state / "vms" / browser_vm_id) == []
        # The user's CLI VM holds the login; tidy it up through the API.
        await api.delete(f"/api/vms/{done['vm_id']}", timeout=60)
    assert qemu_pids_under(state) == []
    assert list((state / "vms").iterdir()) == [], "a VM's files were left behind"


@contextlib.contextmanager
def _held(
    stage: str, state: Path, session: dict[str, Any], conninfo: str | None
) -> Iterator[Callable[[], None]]:
    """Hold the login in ``stage`` once the user has signed in: for ``credentials_captured``
    a transaction locks the Browser VM's row (its destroy, the stage's work, waits for it); for
    ``delivering`` the CLI VM's QEMU is stopped (SIGSTOP: the delivery waits for its agent).
    Yields what lets go (also done on the way out); other stages hold nothing."""
    released: list[Callable[[], None]] = []
    if stage == "credentials_captured":
        assert conninfo is not None
        lock = psycopg.connect(conninfo)
        # NO KEY UPDATE: it holds back the row's update (the destroy's), not rows that refer to it.
        held = "SELECT id FROM vms WHERE id = %s FOR NO KEY UPDATE"
        lock.execute(held, (session["browser_vm_id"],))
        released.append(lock.close)  # closing rolls the transaction back
    elif stage == "delivering":
        record = read_record(state / "vms" / session["vm_id"])
        assert record is not None
        pid = int(str(record["pid"]))
        os.kill(pid, signal.SIGSTOP)
        released.append(lambda: os.kill(pid, signal.SIGCONT))

    def release() -> None:
        while released:
            released.pop()()

    try:
        yield release
    finally:
        release()


@contextlib.asynccontextmanager
async def _stalled_browser_vm(
    api: httpx.AsyncClient, session_id: str, state: Path
) -> AsyncIterator[None]:
    """The session's Browser VM stopped (SIGSTOP of its QEMU) from the moment it runs until
    the way out: its login, which starts beside the CLI VM, cannot be ready when the CLI VM
    is, so the session waits in ``browser_vm_starting`` as it would for a slow Browser VM."""
    deadline = time.monotonic() + 600
    stopped: list[int] = []
    try:
        while not stopped:
            assert time.monotonic() < deadline, "the Browser VM never ran"
            session = (await api.get(f"/api/auth/session/{session_id}")).json()["session"]
            if session["browser_vm_id"]:
                stopped = qemu_pids_under(state / "vms" / session["browser_vm_id"])
            if not stopped:
                await asyncio.sleep(0.01)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def _session_until(
    api: httpx.AsyncClient, session_id: str, status: str, *, poll_s: float = 0.5
) -> dict[str, Any]:
    """The session once it is ``status``; fails if it ends otherwise, goes past ``status``
    unseen, or takes 10 minutes."""
    deadline = time.monotonic() + 600
    order = [s.value for s in AuthStatus]
    while True:
        session: dict[str, Any] = (await api.get(f"/api/auth/session/{session_id}")).json()[
            "session"
        ]
        if session["status"] == status:
            return session
        assert session["status"] not in ENDED, session
        assert order.index(session["status"]) < order.index(status), f"went past {status}"
        assert time.monotonic() < deadline, session
        await asyncio.sleep(poll_s)
