"""End-to-end fixtures: a real OAuth server the Browser VM reaches, and a controller wired to it.

The OAuth server (npm oidc-provider) listens on 127.0.0.1:P on the host. Browser VMs see it as
``http://10.0.2.100:P``: QEMU user-net forwards exactly that guest address to the host port and
nothing else (egress stays restricted), so the issuer is named by that address. The host reaches
the same server at 127.0.0.1:P (the refresh-ownership test uses its token endpoint directly).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from hearth.bench.errors import BenchError
from hearth.bench.oidc_install import ready_dir
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.vm.api_fixtures import Api, serve_app

# e2e_oidc, session-scoped, is taken by tests/e2e/conftest.py (once per session, not per module).
__all__ = ["E2eOidc", "auth_controller"]

GUEST_ISSUER_IP = "10.0.2.100"
CLIENT_ID = "hearth-test"


@dataclass(frozen=True)
class E2eOidc:
    """The running test OAuth server."""

    port: int
    issuer: str  # as Browser VMs see it
    log: Path

    @property
    def host_token_endpoint(self) -> str:
        """The token endpoint as the host reaches it."""
        return f"http://127.0.0.1:{self.port}/token"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def e2e_oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eOidc]:
    """oidc-provider on 127.0.0.1, issuer named by its Browser-VM-visible address."""
    node = shutil.which("node")
    if node is None:
        _unavailable("needs node (Node.js 20 or later) to run the test OAuth server")
    try:
        server_dir = ready_dir(Settings.from_env().cache_dir)
    except BenchError as exc:
        _unavailable(f"{exc.message} (scripts/test.sh does it)")
    port = _free_port()
    issuer = f"http://{GUEST_ISSUER_IP}:{port}"
    log = tmp_path_factory.mktemp("oidc") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [node, "server.mjs"],
            cwd=server_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                "PATH": os.environ.get("PATH", ""),
                "PORT": str(port),
                "ISSUER": issuer,
                "CLIENT_ID": CLIENT_ID,
                "REDIRECT_URIS": "http://127.0.0.1/callback",
            },
        )
    try:
        deadline = time.monotonic() + 30
        while b"listening" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "oidc server did not start"
            time.sleep(0.05)
        discovery = httpx.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration")
        assert discovery.json()["issuer"] == issuer
        yield E2eOidc(port=port, issuer=issuer, log=log)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)


async def auth_controller_for(
    *,
    database_url: str | None,
    state: Path,
    minimal_image: ImageDir,
    browser_image: ImageDir,
    template_dir: Path,
    oidc: E2eOidc,
    login_timeout_s: float = 300,
    **overrides: object,
) -> AsyncIterator[Api]:
    """A controller whose CLI VMs boot the minimal image and Browser VMs the browser image.

    ``overrides`` replace Settings fields that have no environment variable (e.g. the other
    stages' deadlines, ``cli_vm_timeout_s`` and ``browser_vm_timeout_s``).
    """
    env = {
        "HEARTH_STATE_DIR": str(state),
        "HEARTH_OIDC_ISSUER": oidc.issuer,
        "HEARTH_OIDC_UPSTREAM_PORT": str(oidc.port),
        "HEARTH_OIDC_CLIENT_ID": CLIENT_ID,
        "HEARTH_LOGIN_TIMEOUT_S": str(login_timeout_s),
        "HEARTH_MAX_BROWSER_VMS": "3",
        # The tests play the user by typing into the login page over DevTools.
        "HEARTH_BROWSER_DEVTOOLS": "1",
    }
    if database_url:
        env["HEARTH_DATABASE_URL"] = database_url
    settings = Settings.from_env(env).with_overrides(**overrides)
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        browser_image=browser_image,
        template_dir=template_dir,
        destroy_on_exit=True,
    ):
        yield api


@pytest.fixture
async def auth_controller(
    minimal_image: ImageDir,
    browser_image: ImageDir,
    vm_state_dir: Path,
    e2e_oidc: E2eOidc,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Api]:
    """The controller for one end-to-end test (SQLite); an indirect parameter (a dict) changes
    Settings fields, e.g. ``{"browser_devtools": False}``."""
    overrides: dict[str, object] = getattr(request, "param", {})
    async for api in auth_controller_for(
        database_url=None,
        state=tmp_path / "state",
        minimal_image=minimal_image,
        browser_image=browser_image,
        template_dir=vm_state_dir / "templates",
        oidc=e2e_oidc,
        **overrides,
    ):
        yield api


def json_line(data: bytes) -> dict[str, object]:
    """Parse one JSON line (helper for logs)."""
    result: dict[str, object] = json.loads(data)
    return result
