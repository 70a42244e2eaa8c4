"""The controller in process: the real app, store (SQLite and PostgreSQL) and services, over a
fake VM backend, called through httpx's ASGI transport.

What these tests prove is the API boundary (authentication, bodies, statuses, races in the
store and the services); VMs are not the point, so the backend is a stand-in whose VMs are
"ready" at once and have no agent. The real backend is tested under ``tests/vm``.

Layered by lifecycle stage: ``fake_backend`` → ``api_settings`` → ``api`` (the app with its
lifespan entered, a client, the admin key the app wrote). Teardown leaves the lifespan, which
stops every service and closes the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from hearth.api.app import create_app
from hearth.api.context import Controller
from hearth.config import Settings
from hearth.control.bootstrap import ADMIN_KEY_FILE
from hearth.control.quotas import Quotas
from hearth.images.manifest import ImageDir
from hearth.vm.host import free_local_port
from hearth.vm.types import VmType
from tests.fake_backend import FakeBackend
from tests.integration import store_fixtures
from tests.integration.store_fixtures import *  # noqa: F403

# The fixtures (with the store's they build on); test modules take them with ``import *``.
__all__ = ["Api", "api", "api_settings", "fake_backend", *store_fixtures.__all__]

BASE_URL = "http://hearth.test"
# Room for a few VMs of each type; tests of admission pass limits of their own to running_api.
# Every wait on a status ends as soon as it shows; generous for a busy machine.
POLL_S = 0.05
POLL_ROUNDS = 200
DEFAULT_QUOTAS = Quotas(
    per_user={VmType.CLI: 2, VmType.BROWSER: 1},
    max_browser_vms=2,
    memory_limit_mib=64 * 1024,
)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check that ``response`` is the API's error ``{"error": {"code", "message"}}`` with
    ``status`` and ``code`` and a message; return the error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    error: dict[str, Any] = body["error"]
    return error


async def until_status(api: Api, vm_id: str, status: str) -> dict[str, Any]:
    """Poll ``GET /api/vms/{vm_id}`` (admin) until it shows ``status``; the last body."""
    vm: dict[str, Any] = {}
    for _ in range(POLL_ROUNDS):
        vm = (await api.client.get(f"/api/vms/{vm_id}", headers=api.headers())).json()
        if vm["status"] == status:
            break
        await asyncio.sleep(POLL_S)
    assert vm["status"] == status, vm
    return vm


class FakeImages:
    """Every VM type has an image (a directory nobody reads)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def image_for(self, vm_type: VmType) -> ImageDir:
        """The one fake image."""
        return ImageDir(self.root)


@dataclass
class Api:
    """The app under test, its controller and a client without credentials."""

    app: FastAPI
    ctl: Controller
    settings: Settings
    backend: FakeBackend
    admin_key: str
    client: httpx.AsyncClient

    def headers(self, key: str | None = None) -> dict[str, str]:
        """``Authorization`` for ``key`` (default: the admin key)."""
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def user_key(self, user_id: str) -> str:
        """A fresh key for ``user_id``, minted through the API."""
        response = await self.client.post(
            "/api/keys", json={"userId": user_id}, headers=self.headers()
        )
        assert response.status_code == 201, response.text
        key = response.json()["key"]
        assert isinstance(key, str)
        return key


@pytest.fixture
def fake_backend() -> FakeBackend:
    """A fresh fake VM backend."""
    return FakeBackend()


@pytest.fixture
def api_settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings on a private state dir and the test's database (SQLite or PostgreSQL)."""
    return Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_DATABASE_URL": database_url}
    )


@asynccontextmanager
async def running_api(
    settings: Settings,
    backend: FakeBackend,
    images_root: Path,
    *,
    quotas: Quotas = DEFAULT_QUOTAS,
) -> AsyncIterator[Api]:
    """The app with its lifespan entered, for an ``async with`` block; ``quotas`` are the
    admission limits (default: room for a few VMs of each type)."""
    app = create_app(
        settings,
        backend=backend,  # type: ignore[arg-type]
        images=FakeImages(images_root),  # type: ignore[arg-type]
        quotas=quotas,
        monitor_interval_s=0.2,
    )
    async with app.router.lifespan_context(app):
        admin_key = (settings.state_dir / ADMIN_KEY_FILE).read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield Api(app, app.state.controller, settings, backend, admin_key, client)
        if backend.hold is not None:
            backend.hold.set()  # a boot a test left held would otherwise never end
        await app.state.controller.vms.wait_idle()


@pytest.fixture
async def api(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller in process on a fresh database, with its admin key."""
    async with running_api(api_settings, fake_backend, tmp_path / "image") as running:
        yield running


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` (its lifespan already entered) served by uvicorn on loopback in this loop; its
    base URL. httpx's ASGI transport gathers a whole body before it answers, so a stream that
    never ends (``/api/events`` followed) needs a real server."""
    port = free_local_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
