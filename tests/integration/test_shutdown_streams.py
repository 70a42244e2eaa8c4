"""Stopping the controller (SIGTERM, as a service manager sends it) while clients hold long-lived
connections: every event stream ends at once (a client resumes it later), a terminal's socket
closes, and the controller stops: its lifespan's teardown runs, its state dir is free again.

The controller is served as ``hearth serve`` serves it (``ControllerServer``, its lifespan
entering the composition root) on loopback, in the test's loop; the signal is a real one, to
this process, which the server catches while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from hearth.api.app import create_app
from hearth.cli.server import GRACEFUL_SHUTDOWN_S, ControllerServer
from hearth.config import Settings
from hearth.control.bootstrap import ADMIN_KEY_FILE
from hearth.state_dir_lock import CONTROLLER, StateDirLock
from hearth.vm.host import free_local_port
from tests.agent_backend import AgentBackend
from tests.fake_backend import FakeBackend
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import DEFAULT_QUOTAS, Api, FakeImages
from tests.integration.conftest import AgentLauncher
from tests.integration.terminal_fixtures import TerminalSocket

# A stream ends as soon as the server begins to stop: well before uvicorn's own limit
# (``GRACEFUL_SHUTDOWN_S``) would cut it.
ENDS_WITHIN_S = 3.0
# The whole stop, the lifespan's teardown included, on a busy machine.
STOPS_WITHIN_S = 30.0
WAIT_S = 15.0


@dataclass(frozen=True)
class Serving:
    """The controller served on loopback: the app with a client over loopback, its URL, the
    server's task."""

    api: Api
    url: str
    task: asyncio.Task[None]

    async def stopped(self) -> None:
        """Wait until the server (and with it the app's lifespan) has ended."""
        async with asyncio.timeout(STOPS_WITHIN_S):
            await asyncio.shield(self.task)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A private state dir and its SQLite database (nothing here is about the store)."""
    return Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})


@contextlib.asynccontextmanager
async def serving(settings: Settings, backend: FakeBackend, root: Path) -> AsyncIterator[Serving]:
    """The controller served by ``ControllerServer``, with a client; leaving stops it if a test
    did not."""
    app = create_app(
        settings,
        backend=backend,  # type: ignore[arg-type]
        images=FakeImages(root / "image"),  # type: ignore[arg-type]
        quotas=DEFAULT_QUOTAS,
        monitor_interval_s=0.2,
    )
    server = ControllerServer(app, host="127.0.0.1", port=free_local_port())
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        admin_key = (settings.state_dir / ADMIN_KEY_FILE).read_text().strip()
        url = f"http://127.0.0.1:{server.config.port}"
        async with httpx.AsyncClient(base_url=url) as client:
            ctl = app.state.controller
            yield Serving(Api(app, ctl, settings, backend, admin_key, client), url, task)
    finally:
        server.should_exit = True
        await task


def sigterm() -> None:
    """What a service manager sends to stop ``hearth serve``."""
    os.kill(os.getpid(), signal.SIGTERM)


def state_dir_is_free(settings: Settings) -> bool:
    """Whether another controller could take the state dir now."""
    StateDirLock.take(settings.state_dir, holder=CONTROLLER).close()
    return True


async def test_sigterm_ends_a_followed_event_log_and_the_controller_stops(
    settings: Settings, tmp_path: Path
) -> None:
    assert ENDS_WITHIN_S < GRACEFUL_SHUTDOWN_S
    async with serving(settings, FakeBackend(), tmp_path) as served:
        api = served.api
        async with aconnect_sse(api.client, "GET", "/api/events", headers=api.headers()) as source:
            assert source.response.status_code == 200
            events = source.aiter_sse()
            await vm_for(api, "ann")
            async with asyncio.timeout(WAIT_S):
                assert (await anext(events)).event.startswith("vm.")  # the stream is live
            sigterm()
            # The follower never ends by itself; the stopping server ends its stream, cleanly.
            async with asyncio.timeout(ENDS_WITHIN_S):
                async for _ in events:
                    pass
        await served.stopped()
    assert state_dir_is_free(settings)


async def test_sigterm_ends_a_commands_stream_before_its_exit_and_the_command_goes_on(
    settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    pid = None
    try:
        async with serving(settings, AgentBackend(agent_launcher), tmp_path) as served:
            api = served.api
            vm_id = await vm_for(api, "ann")
            body = {"cmd": ["sh", "-c", "echo $$; exec sleep 60"]}
            url = f"/api/vms/{vm_id}/exec"
            kinds = []
            async with aconnect_sse(
                api.client, "POST", url, json=body, headers=api.headers()
            ) as source:
                assert source.response.status_code == 200
                events = source.aiter_sse()
                async with asyncio.timeout(WAIT_S):
                    while (sse := await anext(events)).event != "stdout":
                        kinds.append(sse.event)
                pid = int(json.loads(sse.data)["data"])
                sigterm()
                async with asyncio.timeout(ENDS_WITHIN_S):
                    kinds += [sse.event async for sse in events]
            await served.stopped()
        # It ended before the command did: the SDK takes that for a break and resumes.
        assert "exit" not in kinds, kinds
        os.kill(pid, 0)  # the command runs on under the VM's agent
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # the sleep this test started
    assert state_dir_is_free(settings)


async def test_sigterm_closes_an_open_terminal_and_the_controller_stops(
    settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    async with serving(settings, AgentBackend(agent_launcher), tmp_path) as served:
        api = served.api
        vm_id = await vm_for(api, "ann")
        answer = await api.client.post(f"/api/vms/{vm_id}/terminal", headers=api.headers())
        assert answer.status_code == 201, answer.text
        terminal_id = answer.json()["terminalId"]
        token = parse_qs(urlsplit(answer.json()["url"]).fragment)["token"][0]
        socket_url = f"{served.url.replace('http://', 'ws://')}/terminal/{terminal_id}/socket"
        async with connect(socket_url) as connection:
            terminal = TerminalSocket(connection)
            await terminal.open(token)
            await terminal.until_status("ready")
            sigterm()
            await terminal.until_closed(ENDS_WITHIN_S)
        await served.stopped()
    assert state_dir_is_free(settings)
