"""The ``hearth`` command line against a real controller (keys, vm create/list/show/destroy),
and ``hearth vm run`` straight from the backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hearth.images.manifest import ImageDir
from tests.conftest import hearth_cli
from tests.vm.conftest import qemu_pids_under
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


def test_vm_run_once_boots_one_vm_from_the_configured_vmm_and_leaves_nothing(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    result = hearth_cli(
        "vm", "run", "--image", str(minimal_image.path), "--cold", "--once",
        env={"HEARTH_STATE_DIR": str(state)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready" in result.stdout
    assert "cold via tcg" in result.stdout or "cold via kvm" in result.stdout
    assert "destroyed vm-" in result.stdout
    assert qemu_pids_under(state) == []
    assert list((state / "vms").iterdir()) == []


def test_image_build_prepares_the_templates_of_the_vm_types_that_boot_it(
    minimal_image: ImageDir, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    out = state / "images" / "minimal"  # the image CLI and Browser VMs boot (no other is built)
    env = {"HEARTH_STATE_DIR": str(state)}
    built = hearth_cli("image", "build", "--recipe", "minimal", "--out", str(out), env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "template cli cli-1c-512m-8192v" in built.stdout, built.stdout
    assert "template browser browser-2c-2048m" in built.stdout, built.stdout
    assert built.stdout.count("ready (") == 2, built.stdout
    assert built.stderr.count('"template_built"') == 2, built.stderr
    assert qemu_pids_under(state) == [], "a template build left its QEMU running"
    # A controller on this state dir finds them: its warmer has nothing left to build.
    again = hearth_cli("image", "build", "--recipe", "minimal", "--out", str(out), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("ready (") == 2
    assert '"template_built"' not in again.stderr
