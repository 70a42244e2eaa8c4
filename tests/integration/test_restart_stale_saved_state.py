"""A controller killed with ``kill -9`` while it saved a VM's state leaves ``state.enc.partial``
in the VM's work dir; the next controller's start removes it (logged), from the VM adopted
paused and from every other kept VM, and leaves whole saved states alone. In process, on SQLite
and PostgreSQL, over the fake backend with real work dirs; the partial file is written by the
real ``StateWriter`` in a process killed with SIGKILL."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from hearth.config import Settings
from hearth.control.disk_use import DiskUse
from hearth.vm.saved_files import partial_path, state_path
from hearth.vm.types import VmState
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api
from tests.integration.test_api_hibernate import new_vm, post
from tests.integration.test_api_wake_disk_quota import backend_with_workdirs
from tests.unit.test_qemu_stale_partial_state import cut_short_save, stale_logs


async def test_a_restart_removes_the_partial_state_a_killed_save_left(
    api_settings: Settings, tmp_path: Path
) -> None:
    fake_backend = backend_with_workdirs(tmp_path)
    assert fake_backend.workdirs is not None
    async with running_api(api_settings, fake_backend, tmp_path / "image") as api:
        asleep = await new_vm(api)
        assert (await post(api, asleep, "hibernate")).json()["status"] == "hibernated"
        saving = await new_vm(api, "bob")
        # bob's VM was being saved when the controller was killed: its row says so, and the
        # save's writer died with it, midway.
        await api.ctl.store.vms.transition(saving, VmState.READY, VmState.HIBERNATING)
        held = cut_short_save(state_path(fake_backend.workdirs / saving))
        # A stray one beside a whole saved state goes too; the saved state stays.
        cut_short_save(state_path(fake_backend.workdirs / asleep))
        whole = state_path(fake_backend.workdirs / asleep).read_bytes()

    with capture_logs() as logs:
        async with running_api(api_settings, fake_backend, tmp_path / "image") as api:
            assert (await api.ctl.store.vms.get(saving)).status is VmState.PAUSED
            assert (await api.ctl.store.vms.get(asleep)).status is VmState.HIBERNATED
            for vm_id in (saving, asleep):
                assert not partial_path(state_path(fake_backend.workdirs / vm_id)).exists()
            assert state_path(fake_backend.workdirs / asleep).read_bytes() == whole
            # What bob's VM holds on disk is its layer again, not a share of its memory.
            await DiskUse(store=api.ctl.store, node=api.ctl.node).refresh()
            record = await api.ctl.store.vms.get(saving)
            assert record.disk_bytes is not None
            assert record.disk_bytes < held
            assert (await post(api, asleep, "resume")).json()["status"] == "ready"
            assert (await post(api, saving, "resume")).json()["status"] == "ready"

    removed = {entry["workdir"]: entry for entry in stale_logs(logs)}
    assert set(removed) == {str(fake_backend.workdirs / v) for v in (saving, asleep)}
    entry = removed[str(fake_backend.workdirs / saving)]
    assert (entry["log_level"], entry["during"], entry["bytes"]) == ("warning", "restart", held)
