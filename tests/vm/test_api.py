"""The controller's REST API in process, on SQLite and PostgreSQL, against real QEMU VMs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from hearth.control.quotas import Quotas
from hearth.images.manifest import ImageDir
from hearth.vm.types import VmType
from tests.integration.store_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import *  # noqa: F403
from tests.vm.api_fixtures import Api, serve_app

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def until_pool_holds(pool: Any, vm_type: VmType, size: int) -> None:
    """Wait (up to 60 s) until the warm pool holds ``size`` ready VMs of ``vm_type``."""
    for _ in range(600):
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


async def test_health_needs_no_key_and_shows_no_secrets(controller: Api) -> None:
    async with controller.client("") as anonymous:
        response = await anonymous.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["store"]["ok"] is True
    assert body["backend"]["accel"] in ("kvm", "tcg")
    assert controller.admin_key not in response.text
    assert "password" not in response.text
    assert "hearth-test" not in response.text


async def test_admin_key_file_is_written_once_with_mode_0600(controller: Api) -> None:
    path = controller.settings.state_dir / "admin.key"
    assert path.stat().st_mode & 0o777 == 0o600


async def test_every_route_but_health_needs_a_valid_key(controller: Api) -> None:
    async with controller.client("") as anonymous:
        for method, path in (
            ("GET", "/api/vms"),
            ("POST", "/api/vms"),
            ("GET", "/api/vms/vm-x"),
            ("GET", "/api/keys"),
            ("GET", "/metrics"),
        ):
            assert_error(await anonymous.request(method, path), 401, "unauthorized")
    async with controller.client("hk_wrong") as wrong:
        assert_error(await wrong.get("/api/vms"), 401, "unauthorized")


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


async def test_authorization_matrix_user_a_user_b_and_admin(controller: Api) -> None:
    alice_key = await user_key(controller, "alice")
    bob_key = await user_key(controller, "bob")
    async with controller.client(alice_key) as alice, controller.client(bob_key) as bob:
        vm = (await alice.post("/api/vms", json={})).json()
        vm_id = vm["id"]
        assert_error(await bob.get(f"/api/vms/{vm_id}"), 404, "not_found")
        assert_error(await bob.delete(f"/api/vms/{vm_id}"), 404, "not_found")
        assert_error(await bob.post(f"/api/vms/{vm_id}/pause"), 404, "not_found")
        assert (await bob.get("/api/vms")).json()["vms"] == []
        assert_error(await bob.post("/api/vms", json={"userId": "alice"}), 403, "forbidden")
        assert_error(await alice.post("/api/keys", json={"userId": "alice"}), 403, "forbidden")
        assert_error(await alice.get(f"/api/vms/{vm_id}/console"), 403, "forbidden")
        assert_error(await alice.get("/metrics"), 403, "forbidden")
        assert [v["id"] for v in (await alice.get("/api/vms")).json()["vms"]] == [vm_id]
    async with controller.client() as admin:
        assert vm_id in [v["id"] for v in (await admin.get("/api/vms")).json()["vms"]]
        console = await admin.get(f"/api/vms/{vm_id}/console")
        assert console.status_code == 200
        assert '"/init"' in console.text
        assert_error(await admin.post("/api/vms", json={}), 422, "invalid_input")


async def test_revoked_key_stops_working_at_once(controller: Api) -> None:
    key = await user_key(controller, "carol")
    async with controller.client() as admin:
        keys = (await admin.get("/api/keys")).json()["keys"]
        key_id = next(k["id"] for k in keys if k["userId"] == "carol")
        assert all("key" not in k or k["key"] is None for k in keys)
        assert (await admin.delete(f"/api/keys/{key_id}")).status_code == 200
    async with controller.client(key) as carol:
        assert_error(await carol.get("/api/vms"), 401, "unauthorized")


async def test_per_user_quota_is_409_and_creates_nothing(controller: Api) -> None:
    key = await user_key(controller, "dave")
    async with controller.client(key) as dave:
        assert (await dave.post("/api/vms", json={})).status_code == 201
        error = assert_error(await dave.post("/api/vms", json={}), 409, "quota_exceeded")
        assert "limit is 1" in error["message"]
        assert len((await dave.get("/api/vms")).json()["vms"]) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"vmType": "gpu"}, "vmType"),
        ({"vcpus": "2"}, "vcpus"),
        ({"vcpus": 1000}, "vcpus"),
        ({"memMib": 10**9}, "memMib"),
        ({"memMib": 1.5}, "memMib"),
        ({"colour": "blue"}, "colour"),
        ({"userId": ""}, "userId"),
        ({"userId": "../etc"}, "userId"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_creates_nothing(
    controller: Api, body: dict[str, Any], field: str
) -> None:
    async with controller.client() as admin:
        error = assert_error(
            await admin.post("/api/vms", json={"userId": "erin", **body}), 422, "invalid_input"
        )
        assert field in error["message"]
        assert (await admin.get("/api/vms")).json()["vms"] == []


async def test_malformed_json_is_400_and_unknown_routes_are_json_404(controller: Api) -> None:
    async with controller.client() as admin:
        response = await admin.post(
            "/api/vms", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert_error(response, 400, "malformed_json")
        assert_error(await admin.get("/api/nothing"), 404, "not_found")
        assert_error(await admin.put("/api/vms"), 405, "method_not_allowed")


async def test_wait_false_answers_202_then_the_vm_becomes_ready(controller: Api) -> None:
    async with controller.client() as admin:
        response = await admin.post("/api/vms?wait=false", json={"userId": "frank"})
        assert response.status_code == 202
        vm = response.json()
        assert vm["status"] in ("creating", "booting")
        for _ in range(600):
            vm = (await admin.get(f"/api/vms/{vm['id']}")).json()
            if vm["status"] == "ready":
                break
            await asyncio.sleep(0.1)
        assert vm["status"] == "ready"


async def test_pause_resume_and_destroy_through_the_api(controller: Api) -> None:
    async with controller.client() as admin:
        vm = (await admin.post("/api/vm/create", json={"userId": "gina"})).json()
        assert vm["status"] == "ready"
        assert (await admin.post(f"/api/vms/{vm['id']}/pause")).json()["status"] == "paused"
        assert_error(await admin.post(f"/api/vms/{vm['id']}/pause"), 409, "conflict")
        assert (await admin.post(f"/api/vms/{vm['id']}/resume")).json()["status"] == "ready"
        destroyed = await admin.delete(f"/api/vms/{vm['id']}")
        assert destroyed.json()["status"] == "destroyed"
        again = await admin.delete(f"/api/vms/{vm['id']}")
        assert again.json()["status"] == "destroyed"
    assert not Path(controller.settings.state_dir / "vms" / vm["id"]).exists()


async def test_a_vm_whose_process_dies_is_failed_within_seconds(controller: Api) -> None:
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
        metrics = (await admin.get("/metrics")).text
        assert 'hearth_vm_failures_total{stage="running"} 1.0' in metrics


async def test_metrics_show_vms_boot_histogram_and_http_requests(controller: Api) -> None:
    async with controller.client() as admin:
        await admin.post("/api/vms", json={"userId": "ivy"})
        text = (await admin.get("/metrics")).text
    assert 'hearth_vms{status="ready"} 1.0' in text
    assert "hearth_vm_create_to_healthy_seconds_bucket" in text
    assert 'route="/api/vms"' in text
    assert controller.admin_key not in text


async def test_every_answer_carries_a_request_id_and_is_counted_under_its_route(
    controller: Api,
) -> None:
    async with controller.client() as admin:
        given = await admin.get("/api/vms/vm-none", headers={"X-Request-Id": "trace-42"})
        minted = await admin.get("/api/vms")
        text = (await admin.get("/metrics")).text
    assert_error(given, 404, "not_found")
    assert given.headers["x-request-id"] == "trace-42"
    assert minted.status_code == 200
    assert len(minted.headers["x-request-id"]) == 16
    assert (
        'hearth_http_requests_total{method="GET",route="/api/vms/{vm_id}",status="404"} 1.0' in text
    )
    assert 'hearth_http_requests_total{method="GET",route="/api/vms",status="200"}' in text


async def test_openapi_describes_every_route(controller: Api) -> None:
    async with controller.client("") as anonymous:
        spec = (await anonymous.get("/openapi.json")).json()
    for path in ("/api/vms", "/api/vms/{vm_id}", "/api/keys", "/health", "/metrics"):
        assert path in spec["paths"]


async def test_memory_admission_refuses_with_429(
    minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> None:
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})
    quotas = Quotas(
        per_user={VmType.CLI: 5, VmType.BROWSER: 1}, max_browser_vms=1, memory_limit_mib=700
    )
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        template_dir=vm_state_dir / "templates",
        quotas=quotas,
        destroy_on_exit=True,
    ):
        async with api.client() as admin:
            assert (await admin.post("/api/vms", json={"userId": "jo"})).status_code == 201
            error = assert_error(
                await admin.post("/api/vms", json={"userId": "kim"}), 429, "capacity_exhausted"
            )
            assert "memory" in error["message"]
            assert len((await admin.get("/api/vms")).json()["vms"]) == 1


async def test_warm_pool_hands_out_a_claimed_vm_and_refills(
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
        async with api.client() as admin:
            assert (await admin.get("/api/vms")).json()["vms"] == []
            response = await admin.post("/api/vms", json={"userId": "lee"})
            assert response.status_code == 201
            vm = response.json()
            async with httpx.AsyncClient() as agent:
                ok = await agent.get(
                    f"{vm['agentUrl']}/version",
                    headers={"Authorization": f"Bearer {vm['agentToken']}"},
                )
                assert ok.status_code == 200
            await until_pool_holds(pool, VmType.CLI, 1)
            metrics = (await admin.get("/metrics")).text
            assert 'hearth_pool_handouts_total{vm_type="cli"} 1.0' in metrics
            assert 'hearth_pool_size{vm_type="cli"} 1.0' in metrics
            assert [v["id"] for v in (await admin.get("/api/vms")).json()["vms"]] == [vm["id"]]


async def test_memory_is_admitted_when_the_pool_has_nothing_to_hand_out_and_for_refills(
    minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> None:
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path / "state"), "HEARTH_POOL_CLI": "1"}
    )
    # Room for one pooled 512 MiB VM and not for a second VM of that size.
    quotas = Quotas(
        per_user={VmType.CLI: 5, VmType.BROWSER: 1}, max_browser_vms=1, memory_limit_mib=900
    )
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        template_dir=vm_state_dir / "templates",
        quotas=quotas,
        destroy_on_exit=True,
    ):
        pool = api.ctl.vms.pool
        await until_pool_holds(pool, VmType.CLI, 1)
        async with api.client() as admin:
            # A spec the pool does not hold: a new VM would have to start, and it does not fit.
            error = assert_error(
                await admin.post("/api/vms", json={"userId": "mo", "vcpus": 2}),
                429,
                "capacity_exhausted",
            )
            assert "memory" in error["message"]
            assert (await admin.get("/api/vms")).json()["vms"] == []
            assert pool.size(VmType.CLI) == 1
            # The pool's own VM is already counted: handing it out needs no new memory.
            handed = await admin.post("/api/vms", json={"userId": "mo"})
            assert handed.status_code == 201, handed.text
            # The refill would not fit either: the pool stays empty instead of overfilling.
            await asyncio.sleep(3 * pool.refill_interval_s + 1)
            assert pool.size(VmType.CLI) == 0
            rows = await api.ctl.store.vms.list()
            assert [r.id for r in rows if r.status.value not in ("destroyed", "failed")] == [
                handed.json()["id"]
            ]


async def test_host_wide_browser_vm_limit_is_429_and_creates_nothing(
    minimal_image: ImageDir, tmp_path: Path, vm_state_dir: Path
) -> None:
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})
    quotas = Quotas(
        per_user={VmType.CLI: 1, VmType.BROWSER: 1}, max_browser_vms=0, memory_limit_mib=8192
    )
    async for api in serve_app(
        settings,
        minimal_image=minimal_image,
        template_dir=vm_state_dir / "templates",
        quotas=quotas,
        destroy_on_exit=True,
    ):
        async with api.client() as admin:
            error = assert_error(
                await admin.post("/api/vms", json={"userId": "max", "vmType": "browser"}),
                429,
                "capacity_exhausted",
            )
            assert "Browser VMs" in error["message"]
            assert (await admin.get("/api/vms")).json()["vms"] == []
