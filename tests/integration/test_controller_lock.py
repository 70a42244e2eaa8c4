"""One controller per state dir, and no master-key rotation beside it: a running controller
loaded its vault once and keeps sealing new secrets (captures, agent tokens, VM and workspace
keys, webhook secrets) under that key, so a rotation under it would leave rows only the retired
key opens. A controller in process (its real lifespan) against the real ``hearth`` command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.control.bootstrap import ADMIN_KEY_FILE
from hearth.errors import Conflict
from tests.conftest import hearth_cli
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api

HELD = f"is in use by the controller (pid {os.getpid()}): stop the controller first"


def rotate_master(settings: Settings) -> subprocess.CompletedProcess[str]:
    """``hearth keys rotate-master`` on the controller's state dir and database."""
    env = {"HEARTH_DATABASE_URL": settings.database(), "HEARTH_MASTER_KEY": ""}
    return hearth_cli(
        "keys", "rotate-master", "--state-dir", str(settings.state_dir), env=env, timeout=120
    )


def keys_on_disk(state: Path) -> tuple[bytes, list[str]]:
    """The current key file's bytes and the keyring's file names."""
    keyring = state / "master.keys.d"
    names = sorted(p.name for p in keyring.iterdir()) if keyring.is_dir() else []
    return (state / "master.key").read_bytes(), names


async def test_rotate_master_is_refused_while_the_controller_runs_and_works_after_it_stopped(
    api_settings: Settings, tmp_path: Path
) -> None:
    state = api_settings.state_dir
    async with running_api(api_settings, FakeBackend(), tmp_path / "image"):
        before = keys_on_disk(state)
        refused = await asyncio.to_thread(rotate_master, api_settings)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert HELD in " ".join(refused.stderr.split())
        assert keys_on_disk(state) == before, "no key was made or switched"
    rotated = await asyncio.to_thread(rotate_master, api_settings)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "master key is now" in rotated.stdout
    assert keys_on_disk(state)[0] != before[0]


async def test_a_second_controller_on_the_state_dir_is_refused_and_the_first_keeps_it(
    api: Api, tmp_path: Path
) -> None:
    with pytest.raises(Conflict, match=HELD.replace("(", r"\(").replace(")", r"\)")):
        async with running_api(api.settings, FakeBackend(), tmp_path / "image-2"):
            pytest.fail("a second controller started on the same state dir")
    # The refused one let go of nothing of the first's: it still runs, and still holds the dir.
    assert (await api.client.get("/health")).status_code == 200
    refused = await asyncio.to_thread(rotate_master, api.settings)
    assert refused.returncode == 1, refused.stdout + refused.stderr


async def test_serve_is_refused_before_anything_starts_while_a_controller_runs(
    api: Api, tmp_path: Path
) -> None:
    # A VMM that cannot run here: without the lock, serve would stop there instead (with a
    # different reason) rather than start a second controller in this test.
    env = {
        "HEARTH_STATE_DIR": str(api.settings.state_dir),
        "HEARTH_DATABASE_URL": api.settings.database(),
        "HEARTH_VMM": "firecracker",
        "HEARTH_FIRECRACKER_BIN": str(tmp_path / "no-firecracker"),
    }
    result = await asyncio.to_thread(hearth_cli, "serve", "--port", "1", env=env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert HELD in " ".join(result.stderr.split())
    assert "cannot run on this host" not in result.stderr, "refused before the VMM check"


async def test_a_second_controller_on_the_database_is_refused_and_the_first_keeps_its_vms(
    api: Api, tmp_path: Path
) -> None:
    # Another state dir, the same database: a second controller would fail the first one's
    # VMs at its start (it cannot find their processes) and count quotas apart from it.
    created = await api.client.post("/api/vms", json={"userId": "u1"}, headers=api.headers())
    assert created.status_code == 201, created.text
    elsewhere = Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state-2"),
            "HEARTH_DATABASE_URL": api.settings.database(),
        }
    )
    with pytest.raises(Conflict, match="is in use by another controller: stop it first"):
        async with running_api(elsewhere, FakeBackend(), tmp_path / "image-2"):
            pytest.fail("a second controller started on the same database")
    vm = await api.client.get(f"/api/vms/{created.json()['id']}", headers=api.headers())
    assert vm.json()["status"] == "ready", vm.text


async def test_the_database_is_free_again_once_its_controller_stopped(
    api_settings: Settings, tmp_path: Path
) -> None:
    async with running_api(api_settings, FakeBackend(), tmp_path / "image"):
        pass
    (tmp_path / "state-2").mkdir(mode=0o700)
    admin_key = api_settings.state_dir / ADMIN_KEY_FILE  # the database's admin, kept
    (tmp_path / "state-2" / ADMIN_KEY_FILE).write_bytes(admin_key.read_bytes())
    elsewhere = Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state-2"),
            "HEARTH_DATABASE_URL": api_settings.database(),
        }
    )
    async with running_api(elsewhere, FakeBackend(), tmp_path / "image-2") as second:
        assert (await second.client.get("/health")).status_code == 200


async def test_serve_on_the_database_of_a_running_controller_is_refused_before_it_starts(
    api: Api, tmp_path: Path
) -> None:
    env = {
        "HEARTH_STATE_DIR": str(tmp_path / "state-2"),
        "HEARTH_DATABASE_URL": api.settings.database(),
        "HEARTH_VMM": "firecracker",
        "HEARTH_FIRECRACKER_BIN": str(tmp_path / "no-firecracker"),
    }
    result = await asyncio.to_thread(hearth_cli, "serve", "--port", "1", env=env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is in use by another controller: stop it first" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
