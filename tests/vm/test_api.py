"""The controller's REST API against real QEMU VMs: only what a real VM shows.

A 201 comes once the VM's real agent is healthy and the token it returns works against that
agent; a pause really stops the agent; a SIGKILLed QEMU becomes ``failed`` with its console tail;
a pooled VM is claimed as it joins the pool (a second claim is refused) and handed out with a
token its real agent accepts. The API's own logic (keys, the authorization matrix, admission,
error bodies, metrics, the pool's bookkeeping) is tested in process, on SQLite and PostgreSQL, in
``tests/integration/test_api_routes.py`` and ``test_api_pool.py``; so these run on SQLite only
(the store is not what a real VM changes).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from hearth.images.manifest import ImageDir
from hearth.vm.types import VmType
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.vm]
# The controller fixture on SQLite only: the store on both databases is tested in process.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


async def until_pool_holds(
    pool: Any, vm_type: VmType, size: int, *, timeout_s: float = 60.0
) -> None:
    """Wait (up to ``timeout_s``) until the warm pool holds ``size`` ready VMs of ``vm_type``."""
    for _ in range(int(timeout_s * 10)):
        if pool.size(vm_type) == size:
            return
        await asyncio.sleep(0.1)
    assert pool.size(vm_type) == size


async def user_key(api: Api, user: str) -> str:
    async with api.client() as admin:
        response = await admin.post("/api/keys", json={"userId": user})
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


@sqlite_only
async def test_create_returns_201_once_the_agent_is_healthy(controller: Api) -> None:
    key = await user_key(controller, "alice")
    async with controller.client(key) as alice:
        response = await alice.post("/api/vms", json={"vmType": "cli"})
    assert response.status_code == 201, response.text
    vm = response.json()
    assert vm["status"] == "ready"
    assert vm["userId"] == "alice"
    assert vm["bootMode"] in ("restore", "cold")
    assert vm["diskBytes"] < 10 * 2**20
    async with httpx.AsyncClient() as agent:
        health = await agent.get(f"{vm['agentUrl']}/health")
        assert health.json()["claimed"] is True
        ok = await agent.get(
            f"{vm['agentUrl']}/version", headers={"Authorization": f"Bearer {vm['agentToken']}"}
        )
        assert ok.status_code == 200
    async with controller.client(key) as alice:
        shown = (await alice.get(f"/api/vms/{vm['id']}")).json()
    assert shown["agentToken"] is None
    async with controller.client() as admin:
        # The real console shows the controller's claim reaching the agent.
        console = await admin.get(f"/api/vms/{vm['id']}/console")
    assert console.status_code == 200
    assert '"/init"' in console.text


@sqlite_only
async def test_pause_through_the_api_stops_the_agent_and_destroy_removes_the_vm(
    controller: Api,
) -> None:
    async with controller.client() as admin, httpx.AsyncClient() as agent:
        vm = (await admin.post("/api/vm/create", json={"userId": "gina"})).json()
        assert vm["status"] == "ready"
        assert (await admin.post(f"/api/vms/{vm['id']}/pause")).json()["status"] == "paused"
        with pytest.raises(httpx.TimeoutException):
            await agent.get(f"{vm['agentUrl']}/health", timeout=1.0)
        assert (await admin.post(f"/api/vms/{vm['id']}/resume")).json()["status"] == "ready"
        health = await agent.get(f"{vm['agentUrl']}/health", timeout=10.0)
        assert health.status_code == 200
        destroyed = await admin.delete(f"/api/vms/{vm['id']}")
        assert destroyed.json()["status"] == "destroyed"
    assert not Path(controller.settings.state_dir / "vms" / vm["id"]).exists()


@sqlite_only
async def test_a_sigkilled_qemu_is_failed_within_seconds_with_its_console_tail(
    controller: Api,
) -> None:
    async with controller.client() as admin:
        vm = (await admin.post("/api/vms", json={"userId": "hank"})).json()
        pid = controller.ctl.vms.live[vm["id"]].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            vm = (await admin.get(f"/api/vms/{vm['id']}")).json()
            if vm["status"] == "failed":
                break
            await asyncio.sleep(0.1)
        assert vm["status"] == "failed"
        assert "exited" in vm["error"]
        _, _, tail = vm["error"].partition("console:")
        assert tail.strip(), vm["error"]
        metrics = (await admin.get("/metrics")).text
        assert 'hearth_vm_failures_total{stage="running"} 1.0' in metrics


async def test_warm_pool_hands_out_a_vm_claimed_with_a_token_its_agent_accepts(
    minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> None:
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_POOL_CLI": "1"}
    )
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        template_dir=vm_state_dir / "templates",
        destroy_on_exit=True,
    ):
        pool = api.ctl.vms.pool
        await until_pool_holds(pool, VmType.CLI, 1)
        [pooled] = [r for r in await api.ctl.store.vms.list() if r.pooled]
        async with api.client() as admin, httpx.AsyncClient() as agent:
            # Claimed as it joined the pool: nothing else on the host can claim it first.
            waiting = await agent.get(f"{pooled.agent_url}/health")
            assert waiting.json()["claimed"] is True
            taken = await agent.post(f"{pooled.agent_url}/init", json={"token": "x" * 43})
            assert taken.status_code == 409, taken.text
            response = await admin.post("/api/vms", json={"userId": "lee"})
            assert response.status_code == 201
            vm = response.json()
            assert vm["id"] == pooled.id
            health = await agent.get(f"{vm['agentUrl']}/health")
            assert health.json()["claimed"] is True
            ok = await agent.get(
                f"{vm['agentUrl']}/version",
                headers={"Authorization": f"Bearer {vm['agentToken']}"},
            )
            assert ok.status_code == 200
