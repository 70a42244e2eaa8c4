"""Auth flow failure paths that need a broken image or a killed controller; none gets stuck."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.e2e.flow_fixtures import *  # noqa: F403
from tests.e2e.flow_fixtures import CLIENT_ID, E2eOidc
from tests.e2e.test_auth_flow import ENDED, start, wait_status
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
        assert ended["browser_vm_id"] is None
        message = ended["error_message"]
        assert "not ready after 15000 ms" in message
        assert "vm-" in message
        assert "Connect" in message or "Read" in message or "Remote" in message
    assert qemu_pids_under(tmp_path) == []


def test_controller_killed_while_awaiting_user_fails_the_session_after_restart(
    server: Server,
    minimal_image: ImageDir,
    browser_image: ImageDir,
    e2e_oidc: E2eOidc,
    vm_state_dir: Path,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    (state / "images" / "browser").symlink_to(browser_image.path)
    server.env.update(
        {
            "HEARTH_TEMPLATE_DIR": str(vm_state_dir / "templates"),
            "HEARTH_OIDC_ISSUER": e2e_oidc.issuer,
            "HEARTH_OIDC_UPSTREAM_PORT": str(e2e_oidc.port),
            "HEARTH_OIDC_CLIENT_ID": CLIENT_ID,
        }
    )
    server.start()
    key = (state / "admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}
    started = httpx.post(
        f"{server.url}/api/auth/start",
        json={"userId": "frank", "provider": "oidc"},
        headers=auth,
        timeout=30,
    ).json()
    session_id = started["sessionId"]
    deadline = time.monotonic() + 600
    while True:
        session = httpx.get(
            f"{server.url}/api/auth/session/{session_id}", headers=auth, timeout=30
        ).json()["session"]
        if session["status"] == "awaiting_user":
            break
        assert session["status"] not in ENDED, session
        assert time.monotonic() < deadline
        time.sleep(0.5)
    server.kill9()

    server.start()
    after = httpx.get(
        f"{server.url}/api/auth/session/{session_id}", headers=auth, timeout=30
    ).json()["session"]
    assert after["status"] == "failed"
    assert "restarted" in after["error_message"]
    browser_vm = httpx.get(
        f"{server.url}/api/vms/{session['browser_vm_id']}", headers=auth, timeout=30
    ).json()
    assert browser_vm["status"] in ("destroyed", "failed")
    assert qemu_pids_under(state / "vms" / session["browser_vm_id"]) == []
    # The user's CLI VM was adopted; tidy it up through the API.
    httpx.delete(f"{server.url}/api/vms/{session['vm_id']}", headers=auth, timeout=60)
