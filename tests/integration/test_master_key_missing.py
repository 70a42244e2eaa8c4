"""A restart whose master key is missing (``master.key`` gone, ``HEARTH_MASTER_KEY`` not passed)
while the store holds secrets sealed under it: refused, naming both, before any VM is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import ConfigError
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api, until_status


async def test_restart_without_master_key_is_refused_and_keeps_the_vms(
    api_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        r = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert r.status_code in (200, 201, 202), r.text
        vm_id = r.json()["id"]
        await until_status(api, vm_id, "ready")
        record = await api.ctl.store.vms.get(vm_id)
        assert record is not None
        key_id = record.token_key_id
        assert key_id is not None
    key_file = api_settings.state_dir / "master.key"
    key = key_file.read_bytes()
    key_file.unlink()

    with pytest.raises(ConfigError) as refused:
        async with running_api(api_settings, backend, tmp_path / "image"):
            pass
    message = str(refused.value)
    assert "HEARTH_MASTER_KEY" in message
    assert str(key_file) in message
    assert key_id in message
    assert "agent-token" in message
    assert not key_file.exists()  # no new key was made
    assert vm_id not in backend.destroyed

    key_file.write_bytes(key)
    key_file.chmod(0o600)
    async with running_api(api_settings, backend, tmp_path / "image") as api:
        vm = await api.ctl.store.vms.get(vm_id)
        assert vm is not None
        assert vm.status.value == "ready"


async def test_first_start_creates_the_master_key(api_settings: Settings, tmp_path: Path) -> None:
    async with running_api(api_settings, FakeBackend(), tmp_path / "image"):
        pass
    assert (api_settings.state_dir / "master.key").exists()
