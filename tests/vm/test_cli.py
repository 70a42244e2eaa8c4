"""The ``hearth`` command line against a real controller: keys, vm create/list/show/destroy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm.server_fixtures import *  # noqa: F403
from tests.vm.server_fixtures import Server

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def hearth(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **server.env,
        "HEARTH_URL": server.url,
        "HOME": str(Path(server.env["HEARTH_STATE_DIR"])),
    }
    env["HEARTH_API_KEY"] = key or ""
    return subprocess.run(
        [sys.executable, "-m", "hearth", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_keys_create_then_vm_lifecycle_through_the_cli(server: Server, tmp_path: Path) -> None:
    server.start()
    minted = hearth(server, "keys", "create", "--user", "zed")
    assert minted.returncode == 0, minted.stderr
    key = minted.stdout.strip().splitlines()[-1]
    assert key.startswith("hk_")

    created = hearth(server, "vm", "create", key=key)
    assert created.returncode == 0, created.stderr
    assert "ready" in created.stdout
    assert "curl" in created.stdout
    listed = hearth(server, "vm", "list", key=key)
    assert listed.returncode == 0, listed.stderr
    vm_id = next(word for word in listed.stdout.split() if word.startswith("vm-"))
    shown = hearth(server, "vm", "show", vm_id, key=key)
    assert shown.returncode == 0
    assert "ready" in shown.stdout
    destroyed = hearth(server, "vm", "destroy", vm_id, key=key)
    assert destroyed.returncode == 0, destroyed.stderr
    assert "destroyed" in destroyed.stdout


def test_cli_without_or_with_a_wrong_key_fails_cleanly(server: Server) -> None:
    server.start()
    missing = hearth(server, "vm", "list")
    assert missing.returncode == 1
    assert "unauthorized" in missing.stderr
    wrong = hearth(server, "vm", "list", key="hk_not-a-key")
    assert wrong.returncode == 1
    assert "unauthorized" in wrong.stderr
    for result in (missing, wrong):
        assert "Traceback" not in result.stderr


def test_doctor_reports_accelerator_tools_and_database(server: Server) -> None:
    result = hearth(server, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for word in ("accelerator", "qemu-img", "database", "image minimal"):
        assert word in result.stdout
