"""Hibernation on real CLI VMs: saved to disk encrypted, QEMU ended, woken with everything intact.

The anchors' known failures (E2B #884: changes lost after the second resume; #1104: data lost on
auto-pause) are what these tests look for: a file appended and a counting process checked after
each of 10 hibernate/wake cycles and 20 pause/resume cycles, then ``e2fsck`` of the VM's disk;
and an idle VM hibernated by its lifetime outlives a host reboot (its controller gone, /run
emptied) to be woken by the next command.
The API's rules (409s, quotas, restarts, lifetimes) are tested in process in
``tests/integration/test_api_hibernate.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.store import VmRecord
from hearth.vm.qemu.backend import runtime_dir
from hearth.vm.qemu.disk_keys import DiskKey, key_pipe
from tests.files import files_holding
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_app, serve_owned
from tests.vm.conftest import qemu_pids_under
from tests.vm.test_api import sqlite_only
from tests.vm.test_exec import sh

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]

# A process in its own session (an exec's end kills its process group) counting in memory and
# writing the count out; the exec waits for its first count.
COUNTER = (
    "setsid -f sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' "
    ">/dev/null 2>&1 && while [ ! -s /tmp/count ]; do sleep 0.05; done"
)
# Longer than a check command takes under TCG (~2 s), which must find the VM still running.
IDLE_S = 5
PAUSED_S = 12.0  # a pause long enough that a guest clock left standing would show it
# Appends the cycle's line to a file on the VM's disk and shows the file and two counts a
# moment apart.
CHECK = "echo {line} >> cycles.txt && sync && cat cycles.txt && a=$(cat /tmp/count) && " + (
    "sleep 0.5 && b=$(cat /tmp/count) && echo $a $b"
)


def _settings(database_url: str, state_dir: Path, **overrides: object) -> Settings:
    return Settings.from_env(
        {"HEARTH_STATE_DIR": str(state_dir), "HEARTH_DATABASE_URL": database_url}
    ).with_overrides(**overrides)


@pytest.fixture
async def api(
    database_url: str, minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> AsyncIterator[Api]:
    """A controller whose lifetimes are looked at five times a second."""
    settings = _settings(database_url, tmp_path / "state", lifetime_check_interval_s=0.2)
    async for served in serve_owned(
        settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir
    ):
        yield served


async def _check(client: httpx.AsyncClient, vm_id: str, lines: list[str], last: int) -> int:
    """Append the next line, and prove the file holds every line so far and the counter went
    on from at least ``last``; the count seen."""
    lines.append(f"cycle-{len(lines)}")
    *shown, counts = (await sh(client, vm_id, CHECK.format(line=lines[-1]))).splitlines()
    assert shown == lines, "a change to the VM's disk was lost"
    before, after = (int(n) for n in counts.split())
    assert after > before >= last, f"the counter did not go on ({last} then {before}, {after})"
    return after


async def _hibernate(api: Api, client: httpx.AsyncClient, vm_id: str) -> VmRecord:
    answer = await client.post(f"/api/vms/{vm_id}/hibernate")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "hibernated"
    record = await api.ctl.store.vms.get(vm_id)
    assert record.pid is None
    assert vm_id not in api.ctl.vms.live
    return record


async def test_ten_hibernations_and_twenty_pauses_lose_nothing_and_leave_a_clean_disk(
    api: Api,
) -> None:
    async with api.client() as admin:
        created = await admin.post("/api/vms", json={"userId": "ann"})
        assert created.status_code == 201, created.text
        vm_id, token = created.json()["id"], created.json()["agentToken"]
        workdir = (await api.ctl.store.vms.get(vm_id)).workdir
        assert workdir is not None
        await sh(admin, vm_id, COUNTER)
        lines: list[str] = []
        count = await _check(admin, vm_id, lines, 0)
        for _ in range(10):
            await _hibernate(api, admin, vm_id)
            assert qemu_pids_under(api.settings.state_dir) == []
            # The saved memory holds the agent's token: encrypted, it is nowhere in clear.
            assert (workdir / "state.enc").stat().st_size > 1_000_000
            assert files_holding(workdir, token.encode()) == []
            resumed = await admin.post(f"/api/vms/{vm_id}/resume")
            assert resumed.status_code == 200, resumed.text
            assert resumed.json()["status"] == "ready"
            assert not (workdir / "state.enc").exists(), "a consumed saved state was kept"
            count = await _check(admin, vm_id, lines, count)
        # The guest's clock was set to the host's on each wake.
        guest_time = float(await sh(admin, vm_id, "date +%s.%N"))
        assert abs(guest_time - time.time()) < 5
        for _ in range(20):
            paused = await admin.post(f"/api/vms/{vm_id}/pause")
            assert paused.status_code == 200, paused.text
            resumed = await admin.post(f"/api/vms/{vm_id}/resume")
            assert resumed.status_code == 200, resumed.text
            count = await _check(admin, vm_id, lines, count)
        # The guest's clock stands still while it is paused; a resume sets it again.
        assert (await admin.post(f"/api/vms/{vm_id}/pause")).status_code == 200
        await asyncio.sleep(PAUSED_S)
        assert (await admin.post(f"/api/vms/{vm_id}/resume")).status_code == 200
        guest_time = float(await sh(admin, vm_id, "date +%s.%N"))
        assert abs(guest_time - time.time()) < 5
        # Saved once more (the guest still has its disk mounted): what is on the disk must be
        # a consistent ext4 once its journal is replayed, as after a crash.
        record = await _hibernate(api, admin, vm_id)
        await asyncio.to_thread(_e2fsck_clean, api, record, workdir)
        assert (await admin.post(f"/api/vms/{vm_id}/resume")).status_code == 200
        await _check(admin, vm_id, lines, count)


def _e2fsck_clean(api: Api, record: VmRecord, workdir: Path) -> None:
    """Decrypt a copy of the VM's disk (its key from the row) and fsck it: journal replay,
    then a forced read-only check that must find nothing."""
    keys = api.ctl.vms.keys.open(record)  # a pure function of the row: no event loop needed
    assert keys is not None
    assert keys.disk is not None
    raw = workdir.parent.parent / f"{record.id}-fsck.raw"
    with key_pipe(DiskKey(keys.disk)) as fd:
        converted = subprocess.run(
            [
                "qemu-img", "convert", "-O", "raw",
                "--object", f"secret,id=k,format=raw,file=/dev/fd/{fd}",
                "--image-opts", f"driver=qcow2,file.filename={workdir / 'disk.qcow2'},"
                "encrypt.key-secret=k",
                str(raw),
            ],
            pass_fds=(fd,), capture_output=True, text=True, check=False,
        )  # fmt: skip
    try:
        assert converted.returncode == 0, converted.stderr
        replay = subprocess.run(
            ["e2fsck", "-E", "journal_only", "-y", str(raw)], capture_output=True, text=True
        )
        assert replay.returncode in (0, 1), replay.stdout + replay.stderr
        check = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        raw.unlink(missing_ok=True)


async def test_a_corrupt_saved_state_fails_the_vm_with_why_and_keeps_its_files(api: Api) -> None:
    async with api.client() as admin:
        created = await admin.post("/api/vms", json={"userId": "ann"})
        vm_id = created.json()["id"]
        record = await _hibernate(api, admin, vm_id)
        assert record.workdir is not None
        state = record.workdir / "state.enc"
        with state.open("r+b") as handle:
            handle.seek(4096)
            byte = handle.read(1)
            handle.seek(4096)
            handle.write(bytes([byte[0] ^ 0x01]))
        answer = await admin.post(f"/api/vms/{vm_id}/resume")
        assert answer.status_code == 500, answer.text
        assert answer.json()["error"]["code"] == "saved_state_corrupt"
        assert "chunk 0 does not authenticate" in answer.json()["error"]["message"]
        shown = (await admin.get(f"/api/vms/{vm_id}")).json()
        assert shown["status"] == "failed"
        assert "does not authenticate" in shown["error"]
        kept = list((api.settings.state_dir / "kept").glob(f"{vm_id}-*"))
        assert len(kept) == 1
        assert (kept[0] / "state.enc").is_file(), "the saved state was lost"
        assert str(kept[0]) in shown["error"]
        assert qemu_pids_under(api.settings.state_dir) == []
        # A missing one: the same, by name.
        other = (await admin.post("/api/vms", json={"userId": "bob"})).json()["id"]
        gone = await _hibernate(api, admin, other)
        assert gone.workdir is not None
        (gone.workdir / "state.enc").unlink()
        answer = await admin.post(f"/api/vms/{other}/resume")
        assert answer.json()["error"]["code"] == "saved_state_corrupt"
        assert "is missing" in answer.json()["error"]["message"]
        # The kept files go with their VM once it is deleted (the operator is done with them).
        assert (await admin.delete(f"/api/vms/{vm_id}")).status_code == 200
        assert not kept[0].exists()


async def test_an_idle_vm_is_hibernated_and_survives_a_host_reboot_to_be_woken(
    database_url: str, minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> None:
    settings = _settings(database_url, tmp_path / "state", lifetime_check_interval_s=0.2)
    served = serve_app(
        settings, minimal_image=minimal_image, template_dir=vm_state_dir / "templates"
    )
    first = await anext(served)
    async with first.client() as admin:
        created = await admin.post(
            "/api/vms", json={"userId": "ann", "idleTimeoutS": IDLE_S, "idleAction": "hibernate"}
        )
        assert created.status_code == 201, created.text
        vm_id = created.json()["id"]
        await sh(admin, vm_id, COUNTER)
        lines: list[str] = []
        count = await _check(admin, vm_id, lines, 0)
        # The event is told just after the VM's row says hibernated: wait for both.
        events: list[str] = []
        for _ in range(400):
            events = [e.type for e in await first.ctl.events.list() if e.vm_id == vm_id]
            if "vm.timed_out" in events:
                break
            await asyncio.sleep(0.1)
        assert "vm.timed_out" in events
        assert (await first.ctl.store.vms.get(vm_id)).status.value == "hibernated"
    await served.aclose()  # the controller stops; the hibernated VM's files stay
    # A host reboot: no process of the old boot is left, and /run (a tmpfs: the VMs' sockets)
    # comes back empty; the state dir is kept.
    assert qemu_pids_under(settings.state_dir) == []
    run_dir = runtime_dir(settings.state_dir)
    assert run_dir.is_dir()
    shutil.rmtree(run_dir)
    async for second in serve_owned(
        settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir
    ):
        async with second.client() as admin:
            assert (await admin.get(f"/api/vms/{vm_id}")).json()["status"] == "hibernated"
            # The next command wakes it (autoResume), with its disk and processes intact.
            await _check(admin, vm_id, lines, count)
            assert (await admin.get(f"/api/vms/{vm_id}")).json()["status"] == "ready"
            types = [e.type for e in await second.ctl.events.list() if e.vm_id == vm_id]
            assert "vm.auto_resumed" in types
            assert (await admin.delete(f"/api/vms/{vm_id}")).status_code == 200
