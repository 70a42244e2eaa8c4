"""Fixtures shared by every test layer: settings on temp dirs, and the real images.

Each image (minimal, browser, cli, and the cli image trusting the stand-ins' test CA) is built
once per session through the real CLI (``hearth image build``); the heavy parts are cached under
HEARTH_CACHE_DIR by content hash, so reruns take seconds. They are defined here, once, not in the
modules that use them: a session fixture a test module imports is a fixture of that module, made
again for each module that imports it, and every new copy of an image at a new path needs its
restore templates built anew (a minute and more for a Browser VM's under TCG).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.bench.run_first_event import trusted_image_copy
from hearth.bench.standins.ca import TestCA
from hearth.config import Settings
from hearth.images.manifest import ImageDir, ImageManifest

# Session fixtures defined beside their helpers, taken here for the same reason as the images.
from tests.integration.oidc_fixtures import oidc_server
from tests.integration.store_fixtures import migrated_templates, postgres_server

__all__ = ["migrated_templates", "oidc_server", "postgres_server"]

REPO = Path(__file__).resolve().parent.parent
HEARTH = [sys.executable, "-m", "hearth"]
# A runtime dir untouched this long belongs to no running test session.
_RUN_DIR_IDLE_S = 600.0


def hearth_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hearth`` command line and capture its output."""
    return subprocess.run(
        [*HEARTH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HEARTH_LOG_FORMAT": "json", **(env or {})},
        check=False,
    )


def write_manifest(directory: Path, *, sizes: dict[str, int] | None = None) -> None:
    """A minimal image's ``manifest.json`` in ``directory`` (its files, by ``sizes``, are the
    caller's): enough for code that looks for a built image before it boots one."""
    ImageManifest(
        recipe="minimal",
        agent_version="0",
        content_hash="0",
        suite="bookworm",
        packages=[],
        kernel_package="k",
        kernel_version="6.1",
        disk_mib=600,
        built_at="2026-12-04T00:00:00Z",
        sizes=sizes or {},
    ).write(directory)


def require_tools(*tools: str) -> None:
    """Skip, naming what is missing, when a host program the test needs is not installed."""
    missing = [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (run scripts/install.sh)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private state dir and the shared image cache."""
    return Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_CACHE_DIR": os.environ.get("HEARTH_CACHE_DIR", "/var/cache/hearth"),
        }
    )


@pytest.fixture(scope="session")
def minimal_image_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ImageDir, subprocess.CompletedProcess[str]]:
    """``hearth image build --recipe minimal`` run once for the session, with its output."""
    require_tools("debootstrap", "debugfs", "mkfs.ext4", "qemu-img", "cpio", "lz4", "busybox")
    out = tmp_path_factory.mktemp("image-minimal")
    result = hearth_cli("image", "build", "--recipe", "minimal", "--out", str(out))
    if result.returncode != 0:
        pytest.fail(f"hearth image build failed:\n{result.stdout}\n{result.stderr}")
    return ImageDir(out), result


@pytest.fixture(scope="session")
def minimal_image(
    minimal_image_build: tuple[ImageDir, subprocess.CompletedProcess[str]],
) -> ImageDir:
    """The built minimal image directory."""
    return minimal_image_build[0]


@dataclass(frozen=True)
class BuiltImage:
    """An image built by the CLI, with what the CLI printed and how long it took."""

    image: ImageDir
    result: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="session")
def browser_image_build(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """``hearth image build --recipe browser`` run once for the session."""
    require_tools("debootstrap", "debugfs", "mkfs.ext4", "qemu-img", "cpio", "lz4", "busybox")
    out = tmp_path_factory.mktemp("image-browser")
    started = time.monotonic()
    result = hearth_cli("image", "build", "--recipe", "browser", "--out", str(out), timeout=3600)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(
            f"hearth image build --recipe browser failed:\n{result.stdout}\n{result.stderr}"
        )
    return BuiltImage(image=ImageDir(out), result=result, seconds=seconds)


@pytest.fixture(scope="session")
def browser_image(browser_image_build: BuiltImage) -> ImageDir:
    """The built browser image directory."""
    return browser_image_build.image


@pytest.fixture(scope="session")
def cli_image(tmp_path_factory: pytest.TempPathFactory) -> ImageDir:
    """``hearth image build --recipe cli`` run once for the session."""
    require_tools(
        "debootstrap", "debugfs", "mkfs.ext4", "qemu-img", "cpio", "lz4", "busybox", "npm"
    )
    out = tmp_path_factory.mktemp("image-cli")
    result = hearth_cli("image", "build", "--recipe", "cli", "--out", str(out), timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"hearth image build --recipe cli failed:\n{result.stdout}\n{result.stderr}")
    return ImageDir(out)


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    """The CA of the stand-ins' certificates, trusted by the test image only."""
    return TestCA()


@pytest.fixture(scope="session")
def trusted_cli_image(
    cli_image: ImageDir, test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> ImageDir:
    """The cli image, copied, with the test CA added by ``trust_ca`` (``hearth image
    trust-ca``)."""
    return trusted_image_copy(cli_image, tmp_path_factory.mktemp("image-cli-test-ca"), test_ca.pem)


@pytest.fixture(scope="session")
def vm_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir for the whole session's real VMs: snapshot templates survive across tests
    (those under tests/vm and the contract suite's)."""
    require_tools("qemu-system-x86_64", "qemu-img")
    return tmp_path_factory.mktemp("vm-state")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the empty per-state-dir runtime dirs the suite's backends left in /run/hearth.

    Only those unused for a while: another test session running at the same time (a developer's
    next to CI's) may be between two VMs, its directory empty for a moment but about to hold the
    next QMP socket.
    """
    root = Path("/run/hearth")
    if not root.is_dir():
        return
    for directory in root.iterdir():
        try:
            idle_s = time.time() - directory.stat().st_mtime
            if directory.is_dir() and idle_s > _RUN_DIR_IDLE_S and not any(directory.iterdir()):
                directory.rmdir()
        except OSError:
            continue


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server on 127.0.0.1 (its port): the stand-in a pinned egress name reaches."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
