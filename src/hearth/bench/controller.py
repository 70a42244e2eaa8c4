"""A real controller for the benches: ``hearth serve`` in its own process, or its app in this one.

``ControllerProcess`` gets a core of its own (the load generator runs in the bench's process), a
scratch state dir and the database it is told to use; nothing of the caller's environment that
could start VMs (a warm pool, say) reaches it. ``InProcessController`` serves the same app from
``Settings`` the bench builds, for a bench that needs the control plane's objects themselves.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hearth.api.app import create_app
from hearth.bench.child import ChildServer
from hearth.bench.errors import BenchError
from hearth.bench.loopback_server import LoopbackServer
from hearth.closing import Closing
from hearth.config import Settings
from hearth.control.templates import TemplateState
from hearth.progress import Progress
from hearth.runtime import ControlPlane
from hearth.store import normalise_url
from hearth.teardown import Teardown
from hearth.vm.host import free_local_port
from hearth.vm.readiness import Deadline

START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


@dataclass(eq=False, kw_only=True)
class ControllerProcess(ChildServer):
    """One ``hearth serve`` subprocess on 127.0.0.1, started by ``ControllerProcess.start``."""

    what = "the controller"
    stop_deadline_s = STOP_DEADLINE_S

    url: str
    state_dir: Path
    database_url: str = field(repr=False)  # the store it must serve (may hold a password)

    @classmethod
    async def start(
        cls,
        *,
        state_dir: Path,
        database_url: str | None = None,
        env: Mapping[str, str] | None = None,
        destroy_on_exit: bool = False,
    ) -> ControllerProcess:
        """Start the controller and wait until ``/health`` answers 200.

        ``database_url`` defaults to SQLite in ``state_dir/hearth.db``; ``env`` adds ``HEARTH_*``
        settings (the caller's own never reach the controller); ``destroy_on_exit`` makes it
        destroy every VM it runs when it is stopped.
        """
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        database_url = database_url or f"sqlite+aiosqlite:///{state_dir / 'hearth.db'}"
        port = free_local_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        child_env.update(
            HEARTH_STATE_DIR=str(state_dir),
            HEARTH_DATABASE_URL=database_url,
            HEARTH_LOG_FORMAT="json",
        )
        child_env.update(env or {})
        log = state_dir / "controller.log"
        argv = [sys.executable, "-m", "hearth", "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--state-dir", str(state_dir)]
        argv += ["--destroy-on-exit"] if destroy_on_exit else []
        process = await cls.spawn(argv, log=log, env=child_env)
        controller = cls(
            process=process,
            url=f"http://127.0.0.1:{port}",
            state_dir=state_dir,
            database_url=database_url,
            log=log,
        )
        return await controller.until_ready()

    @property
    def admin_key(self) -> str:
        """The admin key the controller minted into its state dir on first start."""
        return admin_key(self.state_dir)

    async def mint_user_key(self, user_id: str) -> str:
        """A fresh API key for ``user_id`` (``POST /api/keys`` with the admin key)."""
        return await mint_user_key(self.url, self.state_dir, user_id)

    async def wait_warm(self) -> dict[str, str]:
        """Wait until the controller's warm-up at start is over (``/health`` shows no template
        ``pending`` or ``building``); the templates' states."""
        deadline = Deadline.after(START_DEADLINE_S)
        async with httpx.AsyncClient(base_url=self.url) as client:
            while not deadline.expired:
                self.check_running()
                templates: dict[str, str] = (await client.get("/health")).json()["templates"]
                if not {TemplateState.PENDING, TemplateState.BUILDING} & set(templates.values()):
                    return templates
                await asyncio.sleep(0.2)
        raise BenchError(f"the controller's warm-up took over {START_DEADLINE_S:.0f} s")

    async def _wait_ready(self) -> None:
        """Return once ``/health`` answers 200 and names the store the controller was given."""
        health = await self._wait_healthy()
        # A controller that silently fell back to another database would measure that one.
        expected = normalise_url(self.database_url).drivername
        serving = health.get("store", {}).get("url")
        if serving != expected:
            raise BenchError(f"the controller serves store {serving!r}, not {expected!r}")

    async def _wait_healthy(self) -> dict[str, Any]:
        deadline = Deadline.after(START_DEADLINE_S)
        last = "no probe completed"
        async with httpx.AsyncClient(base_url=self.url) as client:
            while not deadline.expired:
                self.check_running()
                try:
                    response = await client.get("/health", timeout=2)
                    if response.status_code == 200:
                        body: dict[str, Any] = response.json()
                        return body
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.1)
        raise BenchError(
            f"the controller was not healthy after {START_DEADLINE_S:.0f} s ({last}):\n"
            f"{self.log_tail()}"
        )


async def start_controller(
    *, state_dir: Path, env: Mapping[str, str], teardown: Teardown, progress: Progress
) -> ControllerProcess:
    """A controller that destroys its VMs when it stops, started in the bench's "controller"
    phase; ``teardown`` stops it."""
    with progress.phase("controller", "start hearth serve"):
        controller = await ControllerProcess.start(
            state_dir=state_dir, env=env, destroy_on_exit=True
        )
        teardown.push("stop the controller", controller.stop)
    return controller


class InProcessController(Closing):
    """``hearth serve``'s app served on 127.0.0.1 in this process, its composition root entered
    by the app's lifespan; ``async with`` starts it.

    For a bench that needs the control plane's own objects next to the API: the auth flow's
    delivery writes a credential into a VM and opens that VM's egress path to the provider, and
    both live in the process that runs the VM.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app = create_app(settings, destroy_on_exit=True)
        self._server = LoopbackServer(self._app, lifespan=True)

    async def start(self) -> None:
        """Enter the composition root and start serving."""
        await self._server.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self._server.url

    @property
    def control(self) -> ControlPlane:
        """The running control plane (credentials, the auth flow, the VM service, …)."""
        control: ControlPlane = self._app.state.controller
        return control

    async def mint_user_key(self, user_id: str) -> str:
        """A fresh API key for ``user_id`` (``POST /api/keys`` with the admin key)."""
        return await mint_user_key(self.url, self.settings.state_dir, user_id)

    async def close(self) -> None:
        """Stop serving and leave the composition root (its VMs are destroyed); safe twice."""
        await self._server.close()


def admin_key(state_dir: Path) -> str:
    """The admin key a controller minted into ``state_dir`` on first start."""
    try:
        return (state_dir / "admin.key").read_text().strip()
    except OSError as exc:
        raise BenchError(f"the controller wrote no admin key: {exc.strerror}") from exc


async def mint_user_key(url: str, state_dir: Path, user_id: str) -> str:
    """A fresh API key for ``user_id`` from the controller at ``url`` whose state dir is
    ``state_dir`` (``POST /api/keys`` with its admin key)."""
    headers = {"Authorization": f"Bearer {admin_key(state_dir)}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=30, trust_env=False
    ) as client:
        response = await client.post("/api/keys", json={"userId": user_id})
    if response.status_code != 201:
        raise BenchError(f"minting a key answered HTTP {response.status_code}")
    key = response.json()["key"]
    if not isinstance(key, str):
        raise BenchError("minting a key answered no key")
    return key
