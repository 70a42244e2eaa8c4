"""No workspace volume outlives the row that names it, in process on SQLite and PostgreSQL over
the fake backend: a create whose insert fails removes the volume it made, one whose insert
stored the row before a cancel reached it keeps it, and a controller's start removes the volume
files no row names (a controller that died between the two) and prototype scratch files, never
the file of a workspace that exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from hearth.config import Settings
from hearth.store.records import WorkspaceRecord
from hearth.vm.types import Vm, VmSpec
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api


def with_workspaces(api_settings: Settings) -> Settings:
    """64 MiB workspaces within a 1 GiB quota."""
    return api_settings.with_overrides(workspace_size_mib=64, user_disk_quota_mib=1024)


def volume_files(settings: Settings) -> list[str]:
    """The names of the files in the node's volumes dir."""
    return sorted(path.name for path in (settings.state_dir / "volumes").iterdir())


async def create(api: Api, user: str = "ann") -> int:
    """``POST /api/vms`` of a CLI VM of ``user``'s; its status."""
    made = await api.client.post("/api/vms", json={"userId": user}, headers=api.headers())
    return made.status_code


@pytest.fixture
async def api_ws(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> AsyncIterator[Api]:
    """A controller giving workspaces (``with_workspaces``)."""
    async with running_api(with_workspaces(api_settings), fake_backend, tmp_path / "image") as api:
        yield api


async def test_a_workspace_whose_insert_fails_leaves_no_volume_behind(
    api_ws: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, rows = api_ws, api_ws.ctl.store.workspaces
    insert = rows.insert

    async def locked_once(record: WorkspaceRecord) -> WorkspaceRecord:
        monkeypatch.setattr(rows, "insert", insert)
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(rows, "insert", locked_once)
    assert await create(api) != 201  # the VM could not get its workspace: it failed
    assert volume_files(api.settings) == []
    assert await create(api) == 201
    stored = await rows.get("ann")
    assert stored is not None
    assert volume_files(api.settings) == [f"{stored.id}.qcow2"]


async def test_a_cancel_that_reaches_a_stored_insert_keeps_its_volume(
    api_ws: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store call runs to completion under a cancel, then raises it: the row may be in.
    api, rows, workspaces = api_ws, api_ws.ctl.store.workspaces, api_ws.ctl.vms.workspaces
    assert workspaces is not None
    insert = rows.insert

    async def stored_then_cancelled(record: WorkspaceRecord) -> WorkspaceRecord:
        await insert(record)
        raise asyncio.CancelledError

    monkeypatch.setattr(rows, "insert", stored_then_cancelled)
    await api.ctl.store.users.ensure("ann")
    with pytest.raises(asyncio.CancelledError):
        await workspaces.attach("ann", Vm(id="vm-1", spec=VmSpec(), backend="fake"))
    stored = await rows.get("ann")
    assert stored is not None
    assert volume_files(api.settings) == [f"{stored.id}.qcow2"]


async def test_a_start_removes_the_volume_files_no_workspace_names(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    settings = with_workspaces(api_settings)
    async with running_api(settings, fake_backend, tmp_path / "image") as api:
        assert await create(api) == 201
        anns = await api.ctl.store.workspaces.get("ann")
        assert anns is not None
    volumes = settings.state_dir / "volumes"
    (volumes / "ws-never-stored.qcow2").write_bytes(b"")  # its controller died before the row
    (volumes / ".prototype-0123456789ab.qcow2").write_bytes(b"")  # its maker died before the unlink
    (volumes / "README").write_text("not a volume")
    # Workspaces turned off since: the files of the workspaces that exist stay all the same.
    async with running_api(
        settings.with_overrides(workspace_size_mib=0), fake_backend, tmp_path / "image"
    ) as api:
        assert volume_files(settings) == ["README", f"{anns.id}.qcow2"]
        assert await api.ctl.store.workspaces.get("ann") == anns
