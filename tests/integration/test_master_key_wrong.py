"""A start with a master key that is set but is not the one the store's secrets were sealed under
(``HEARTH_MASTER_KEY`` set to another valid key, or another ``master.key``): refused as a start
without any key is, naming the variable (or the file) and the key ids, never a key, before any
VM is touched. In process, and through the real ``hearth serve``."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.credentials.keys import key_id_of
from hearth.errors import ConfigError
from tests.conftest import hearth_cli
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api, until_status


@dataclass
class SealedVm:
    """A ready VM on ``backend`` whose agent token is sealed under the state dir's first
    ``master.key`` (``key``, base64; its id ``key_id``)."""

    backend: FakeBackend
    vm_id: str
    key_id: str
    key: str

    async def status(self, settings: Settings, tmp_path: Path) -> str:
        """The VM's status once a controller with ``settings`` has started (and reconciled)."""
        async with running_api(settings, self.backend, tmp_path / "image") as api:
            vm = await api.ctl.store.vms.get(self.vm_id)
            assert vm is not None
            return vm.status.value


async def _sealed_vm(settings: Settings, tmp_path: Path) -> SealedVm:
    backend = FakeBackend()
    async with running_api(settings, backend, tmp_path / "image") as api:
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert made.status_code == 201, made.text
        await until_status(api, made.json()["id"], "ready")
        (key_id,) = (await api.ctl.store.sealed.count_by_key())["agent-token"]
    key = (settings.state_dir / "master.key").read_text().strip()
    return SealedVm(backend, made.json()["id"], key_id, key)


def _other_key() -> tuple[str, str]:
    """A valid master key (base64) that sealed nothing, and its id."""
    secret = secrets.token_bytes(32)
    return base64.b64encode(secret).decode(), key_id_of(secret)


async def test_a_set_master_key_that_sealed_nothing_is_refused_naming_the_key_ids(
    api_settings: Settings, tmp_path: Path
) -> None:
    vm = await _sealed_vm(api_settings, tmp_path)
    key_file = api_settings.state_dir / "master.key"
    key_file.unlink()  # the operator keeps the key in the environment only
    wrong, wrong_id = _other_key()

    wrong_settings = api_settings.with_overrides(master_key=wrong)
    with pytest.raises(ConfigError) as refused:
        async with running_api(wrong_settings, vm.backend, tmp_path / "image"):
            pytest.fail("started with a master key that opens none of the sealed secrets")
    message = str(refused.value)
    assert message.startswith("wrong master key: HEARTH_MASTER_KEY holds master key ")
    assert wrong_id in message
    assert vm.key_id in message
    assert "agent-token" in message
    assert wrong not in message
    assert vm.key not in message
    assert vm.vm_id not in vm.backend.destroyed
    assert not key_file.exists()

    # The right key in the variable starts, and the VM is as it was.
    assert await vm.status(api_settings.with_overrides(master_key=vm.key), tmp_path) == "ready"


async def test_another_master_key_file_is_refused_naming_the_file(
    api_settings: Settings, tmp_path: Path
) -> None:
    vm = await _sealed_vm(api_settings, tmp_path)
    key_file = api_settings.state_dir / "master.key"
    wrong, wrong_id = _other_key()
    key_file.write_text(wrong + "\n")  # e.g. restored from another host's backup

    with pytest.raises(ConfigError) as refused:
        async with running_api(api_settings, vm.backend, tmp_path / "image"):
            pytest.fail("started with a master.key that opens none of the sealed secrets")
    message = str(refused.value)
    assert message.startswith(f"wrong master key: {key_file} holds master key {wrong_id}")
    assert vm.key_id in message
    assert wrong not in message

    key_file.write_text(vm.key + "\n")
    assert await vm.status(api_settings, tmp_path) == "ready"


async def test_a_key_kept_in_the_keyring_still_opens_what_it_sealed(
    api_settings: Settings, tmp_path: Path
) -> None:
    # The documented switch to the variable: the old master.key stays and joins the keyring.
    vm = await _sealed_vm(api_settings, tmp_path)
    new, _ = _other_key()
    assert await vm.status(api_settings.with_overrides(master_key=new), tmp_path) == "ready"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_with_the_wrong_master_key_prints_one_line_and_touches_no_vm(
    api_settings: Settings, tmp_path: Path
) -> None:
    vm = await _sealed_vm(api_settings, tmp_path)
    key_file = api_settings.state_dir / "master.key"
    key_file.unlink()
    wrong, wrong_id = _other_key()
    env = {
        "HEARTH_STATE_DIR": str(api_settings.state_dir),
        "HEARTH_DATABASE_URL": api_settings.database(),
        "HEARTH_MASTER_KEY": wrong,
    }
    port = str(_closed_port())
    result = await asyncio.to_thread(hearth_cli, "serve", "--port", port, env=env, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert '"event": "serve_refused"' in result.stderr
    start = result.stderr.find("error (config_invalid): ")
    assert start >= 0, output
    refusal = " ".join(result.stderr[start:].split())  # the console wraps long lines
    assert refusal.startswith(
        f"error (config_invalid): wrong master key: HEARTH_MASTER_KEY holds master key {wrong_id}"
    )
    assert vm.key_id in refusal
    assert wrong not in output
    assert vm.key not in output
    assert not key_file.exists()
    assert await vm.status(api_settings.with_overrides(master_key=vm.key), tmp_path) == "ready"
