"""A real controller for API tests: uvicorn in the test's event loop, real store, real QEMU.

``controller`` serves the app on a free loopback port with its own state dir (so reconciliation
only ever sees its own VMs) and the session's template dir (so the snapshot template is built
once). It yields the base URL, the admin key read from the 0600 file the app wrote, and the
app's Controller. Teardown stops the server, destroys every VM still alive, and proves nothing
was left behind.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from hearth.api.app import create_app
from hearth.api.context import Controller
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.node.images import ImageCatalog
from hearth.vm.qemu.backend import QemuBackend
from hearth.vm.types import VmType
from tests.vm.conftest import qemu_pids_under

__all__ = ["Api", "controller", "linked_copy", "serve_app", "serve_owned"]


@dataclass
class Api:
    """A running controller under test."""

    url: str
    admin_key: str
    ctl: Controller
    settings: Settings

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        """An HTTP client with ``key`` (default: the admin key) as bearer."""
        headers = {} if key == "" else {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_app(
    settings: Settings,
    *,
    minimal_image: ImageDir,
    template_dir: Path,
    browser_image: ImageDir | None = None,
    cli_image: ImageDir | None = None,
    cold_deadline_s: float | None = None,
    prepare_templates: bool = False,
    **app_kwargs: object,
) -> AsyncIterator[Api]:
    """Serve the app until the generator is closed. Templates are built when a test's first VM
    needs one, not in the background at start (``prepare_templates``), which would compete with
    the test's own VMs for the CPU."""
    settings = settings.with_overrides(prepare_templates=prepare_templates)
    backend = QemuBackend(
        state_dir=settings.state_dir,
        template_dir=template_dir,
        network_pool=settings.network_pool,
    )
    if cold_deadline_s is not None:
        backend.cold_deadline_s = cold_deadline_s
    images = ImageCatalog(
        settings,
        overrides={
            VmType.CLI: (cli_image or minimal_image).path,
            VmType.BROWSER: (browser_image or minimal_image).path,
        },
    )
    app = create_app(settings, backend=backend, images=images, **app_kwargs)  # type: ignore[arg-type]
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    admin_key = (settings.state_dir / "admin.key").read_text().strip()
    api = Api(f"http://127.0.0.1:{port}", admin_key, app.state.controller, settings)
    try:
        yield api
    finally:
        server.should_exit = True
        await task


def linked_copy(image: ImageDir, into: Path) -> ImageDir:
    """A private image directory of hard links to ``image``'s files: an install into it swaps
    its own path, never the session's image."""
    into.mkdir()
    for item in image.path.iterdir():
        if item.is_file():
            (into / item.name).hardlink_to(item)
    return ImageDir(into)


async def serve_owned(
    settings: Settings, *, minimal_image: ImageDir, vm_state_dir: Path, **kwargs: object
) -> AsyncIterator[Api]:
    """``serve_app`` on the session's templates that destroys its VMs on exit, then proves no
    QEMU under its state dir outlived it."""
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        template_dir=vm_state_dir / "templates",
        destroy_on_exit=True,
        **kwargs,  # type: ignore[arg-type]
    ):
        yield api
    assert qemu_pids_under(settings.state_dir) == [], "a VM outlived its controller"


@pytest.fixture
async def controller(
    database_url: str,
    minimal_image: ImageDir,
    tmp_path: Path,
    vm_state_dir: Path,
) -> AsyncIterator[Api]:
    """A controller on ``database_url`` (SQLite and PostgreSQL) with VMs destroyed on exit."""
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_DATABASE_URL": database_url}
    )
    async for api in serve_owned(settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir):
        yield api
    vms_dir = settings.state_dir / "vms"
    assert not vms_dir.exists() or list(vms_dir.iterdir()) == []
