"""The real ``hearth serve`` process: kill -9 while VMs boot, restart, nothing lost or leaked."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from hearth.network.namespace import list_namespaces
from tests.files import files_holding
from tests.vm.conftest import qemu_pids_under
from tests.vm.server_fixtures import *  # noqa: F403
from tests.vm.server_fixtures import Server

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def test_kill_9_while_vms_boot_loses_no_row_and_leaks_nothing_after_restart(
    server: Server, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    server.start()
    key = (state / "admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}
    booting = []
    for user in ("ann", "ben"):
        response = httpx.post(
            f"{server.url}/api/vms?wait=false", json={"userId": user}, headers=auth, timeout=30
        )
        assert response.status_code == 202, response.text
        booting.append(response.json()["id"])
    deadline = time.monotonic() + 30
    while not qemu_pids_under(tmp_path / "templates") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_pids_under(tmp_path / "templates"), "the template build never started"
    server.kill9()

    server.start()
    vms = httpx.get(f"{server.url}/api/vms", headers=auth, timeout=30).json()["vms"]
    by_id = {vm["id"]: vm for vm in vms}
    assert set(booting) <= set(by_id), "a row was lost"
    for vm_id in booting:
        assert by_id[vm_id]["status"] == "failed"
        assert "restart" in by_id[vm_id]["error"] or "gone" in by_id[vm_id]["error"]
    assert qemu_pids_under(tmp_path) == [], "a QEMU process of the killed controller survived"
    assert not list((state / "vms").glob("*")) if (state / "vms").exists() else True
    assert not [n for n in list_namespaces() if any(v[3:12] in n for v in booting)]

    # The restarted controller works: a new VM boots (building the template afresh).
    created = httpx.post(f"{server.url}/api/vms", json={"userId": "cat"}, headers=auth, timeout=300)
    assert created.status_code == 201, created.text
    vm = created.json()
    # SIGTERM stops the controller gracefully and leaves VMs running...
    assert server.stop() == 0
    assert len(qemu_pids_under(state)) == 1
    # ...and the next start adopts the running VM instead of destroying it.
    server.start()
    shown = httpx.get(f"{server.url}/api/vms/{vm['id']}", headers=auth, timeout=30).json()
    assert shown["status"] == "ready"
    health = httpx.get(
        f"{vm['agentUrl']}/version",
        headers={"Authorization": f"Bearer {vm['agentToken']}"},
        timeout=10,
    )
    assert health.status_code == 200
    # The restarted controller reached the agent itself, with the token it unsealed from the
    # store: no file on the host holds that token in clear (nor did one before the restart).
    ran = httpx.post(
        f"{server.url}/api/vms/{vm['id']}/exec?wait=false",
        json={"cmd": ["true"]},
        headers=auth,
        timeout=30,
    )
    assert ran.status_code == 202, ran.text
    assert files_holding(tmp_path, vm["agentToken"].encode()) == []
    deleted = httpx.delete(f"{server.url}/api/vms/{vm['id']}", headers=auth, timeout=30)
    assert deleted.json()["status"] == "destroyed"
    assert qemu_pids_under(tmp_path) == []
    log = (tmp_path / "controller.log").read_text()
    assert key not in log, "the admin key reached the controller's log"
    assert vm["agentToken"] not in log, "an agent token reached the controller's log"
    assert '"vm_id"' in log
