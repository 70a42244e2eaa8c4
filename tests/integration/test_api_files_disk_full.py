"""A VM whose disk is full: an upload to ``/api/vms/{id}/files`` is 507 ``insufficient_storage``
with the agent's message, not a 502, and leaves nothing behind. The controller runs in process
over a real agent process on loopback whose workspace is a small tmpfs, full for real."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.tmpfs import small_tmpfs_at

MIB = 1024 * 1024


@pytest.fixture
async def files_api(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller in process over VMs with real agents; uploads up to 8 MiB."""
    settings = api_settings.with_overrides(files_max_bytes=8 * MIB)
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


def one_file_tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_an_upload_to_a_full_disk_is_507_and_leaves_nothing(files_api: Api) -> None:
    headers = files_api.headers(await files_api.user_key("ann"))
    created = await files_api.client.post("/api/vms", json={"vmType": "cli"}, headers=headers)
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    backend = files_api.backend
    assert isinstance(backend, AgentBackend)
    workspace = backend.launcher.root / vm_id / "home" / "workspace"
    url = f"/api/vms/{vm_id}/files"
    # The agent opens its workspace by path at each request: it writes on the tmpfs from now.
    with small_tmpfs_at(workspace, size="1m"):
        file = await files_api.client.put(
            url, params={"path": "big.bin"}, content=bytes(2 * MIB), headers=headers
        )
        error = assert_error(file, 507, "insufficient_storage")
        assert "big.bin: no room left on the disk" in error["message"]
        archive = await files_api.client.put(
            url,
            params={"path": "tree"},
            content=one_file_tar("big.bin", bytes(2 * MIB)),
            headers={**headers, "Content-Type": "application/x-tar"},
        )
        assert_error(archive, 507, "insufficient_storage")
        assert list(workspace.iterdir()) == []
        small = await files_api.client.put(url, params={"path": "s"}, content=b"s", headers=headers)
        assert small.status_code == 200, small.text
