"""The REST API's routes in process, on SQLite and PostgreSQL, over the fake VM backend: keys and
the authorization matrix, admission (quotas 409, memory and Browser VMs 429), error bodies,
``wait=false``, a VM that dies, metrics, request ids and the OpenAPI document.

What only a real VM shows (a 201 whose token works against the real agent, a pause that really
stops it, a SIGKILLed QEMU's console tail) stays in ``tests/vm/test_api.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.control.bootstrap import ADMIN_KEY_FILE
from hearth.control.quotas import Quotas
from hearth.vm.types import Vm, VmType
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api, until_status

# What ConsoleBackend's VMs print on their console (a real VM's shows the agent's claim).
CONSOLE_LINE = 'hearth-agent: POST "/init" 200'


class ConsoleBackend(FakeBackend):
    """A ``FakeBackend`` whose VMs have a console (``FakeBackend``'s have none)."""

    def console_tail(self, vm: Vm, lines: int = 40) -> str:
        """One line, the same for every VM."""
        return CONSOLE_LINE + "\n"


@pytest.fixture
def fake_backend() -> FakeBackend:
    """The fake backend, with a console the admin's console route can show."""
    return ConsoleBackend()


# --- health, keys and who may do what ---------------------------------------------------------


async def test_health_needs_no_key_and_shows_no_secrets_or_host_paths(
    api: Api, tmp_path: Path
) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["store"]["ok"] is True
    assert body["backend"]["accel"] in ("kvm", "tcg")
    # The images' states, not where they are on the host (the image, the state dir: tmp_path).
    assert body["images"] == {"cli": "ready", "browser": "ready"}
    assert "details" not in body
    assert "vms" not in body  # how busy the host is: the admin's to see
    assert str(tmp_path) not in response.text
    assert api.admin_key not in response.text
    assert "password" not in response.text
    assert "hearth-test" not in response.text  # the test PostgreSQL role's password


async def test_health_shows_the_admin_key_where_the_images_are(api: Api, tmp_path: Path) -> None:
    response = await api.client.get("/health", headers=api.headers())
    assert response.status_code == 200
    body = response.json()
    image = str(tmp_path / "image")
    assert body["details"]["images"] == {"cli": image, "browser": image}
    assert set(body["details"]["templates"]) == {"cli", "browser"}
    assert body["images"] == {"cli": "ready", "browser": "ready"}
    assert body["details"]["vms"] == {"live": 0}
    vm = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    assert vm.status_code == 201, vm.text
    shown = (await api.client.get("/health", headers=api.headers())).json()
    assert shown["details"]["vms"] == {"live": 1}


async def test_health_without_a_store_is_503_and_public_whatever_key_it_gets(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_answer() -> bool:
        return False

    # A key cannot be checked without the store: the probe still answers, degraded.
    monkeypatch.setattr(api.ctl.store, "ping", no_answer)
    response = await api.client.get("/health", headers=api.headers())
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert "details" not in response.json()


async def test_health_refuses_a_key_that_is_not_a_valid_admin_key(api: Api) -> None:
    user = api.headers(await api.user_key("ann"))
    assert_error(await api.client.get("/health", headers=user), 403, "forbidden")
    for wrong in ("Bearer hk_not-a-key", "Bearer ", "Basic abc"):
        response = await api.client.get("/health", headers={"Authorization": wrong})
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_admin_key_file_is_written_once_with_mode_0600(api: Api) -> None:
    path = api.settings.state_dir / ADMIN_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600


async def test_every_route_but_health_needs_a_valid_key(api: Api) -> None:
    for method, path in (
        ("GET", "/api/vms"),
        ("POST", "/api/vms"),
        ("GET", "/api/vms/vm-x"),
        ("GET", "/api/keys"),
        ("GET", "/metrics"),
    ):
        assert_error(await api.client.request(method, path), 401, "unauthorized")
    wrong = api.headers("hk_wrong")
    assert_error(await api.client.get("/api/vms", headers=wrong), 401, "unauthorized")


async def test_authorization_matrix_user_a_user_b_and_admin(api: Api) -> None:
    alice = api.headers(await api.user_key("alice"))
    bob = api.headers(await api.user_key("bob"))
    admin = api.headers()
    client = api.client
    created = await client.post("/api/vms", json={}, headers=alice)
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]

    assert_error(await client.get(f"/api/vms/{vm_id}", headers=bob), 404, "not_found")
    assert_error(await client.delete(f"/api/vms/{vm_id}", headers=bob), 404, "not_found")
    assert_error(await client.post(f"/api/vms/{vm_id}/pause", headers=bob), 404, "not_found")
    assert (await client.get("/api/vms", headers=bob)).json()["vms"] == []
    assert_error(
        await client.post("/api/vms", json={"userId": "alice"}, headers=bob), 403, "forbidden"
    )
    assert_error(
        await client.post("/api/keys", json={"userId": "alice"}, headers=alice), 403, "forbidden"
    )
    assert_error(await client.get(f"/api/vms/{vm_id}/console", headers=alice), 403, "forbidden")
    assert_error(await client.get("/metrics", headers=alice), 403, "forbidden")
    assert [v["id"] for v in (await client.get("/api/vms", headers=alice)).json()["vms"]] == [vm_id]

    assert vm_id in [v["id"] for v in (await client.get("/api/vms", headers=admin)).json()["vms"]]
    console = await client.get(f"/api/vms/{vm_id}/console", headers=admin)
    assert console.status_code == 200
    assert '"/init"' in console.text
    assert_error(await client.post("/api/vms", json={}, headers=admin), 422, "invalid_input")
    # Nothing bob tried reached alice's VM.
    assert api.backend.destroyed == []
    assert (await client.get(f"/api/vms/{vm_id}", headers=alice)).json()["status"] == "ready"


async def test_revoked_key_stops_working_at_once(api: Api) -> None:
    key = await api.user_key("carol")
    keys = (await api.client.get("/api/keys", headers=api.headers())).json()["keys"]
    key_id = next(k["id"] for k in keys if k["userId"] == "carol")
    assert all("key" not in k or k["key"] is None for k in keys)
    assert (
        await api.client.delete(f"/api/keys/{key_id}", headers=api.headers())
    ).status_code == 200
    assert_error(await api.client.get("/api/vms", headers=api.headers(key)), 401, "unauthorized")


# --- admission -------------------------------------------------------------------------------


async def test_per_user_quota_is_409_and_creates_nothing(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    quotas = Quotas(
        per_user={VmType.CLI: 1, VmType.BROWSER: 1}, max_browser_vms=2, memory_limit_mib=8192
    )
    async with running_api(api_settings, fake_backend, tmp_path / "image", quotas=quotas) as api:
        dave = api.headers(await api.user_key("dave"))
        assert (await api.client.post("/api/vms", json={}, headers=dave)).status_code == 201
        error = assert_error(
            await api.client.post("/api/vms", json={}, headers=dave), 409, "quota_exceeded"
        )
        assert "limit is 1" in error["message"]
        assert len((await api.client.get("/api/vms", headers=dave)).json()["vms"]) == 1
        assert len(api.backend.created) == 1


async def test_a_create_cancelled_while_its_row_is_written_leaves_no_row_holding_the_quota(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # A login cancelled while its Browser VM's row was being written once left that row
    # `creating` for good, with no boot to follow it: the user's quota stayed used.
    quotas = Quotas(
        per_user={VmType.CLI: 1, VmType.BROWSER: 1}, max_browser_vms=2, memory_limit_mib=8192
    )
    async with running_api(api_settings, fake_backend, tmp_path / "image", quotas=quotas) as api:
        vms, rows = api.ctl.vms, api.ctl.store.vms
        written, answered = asyncio.Event(), asyncio.Event()
        real_insert = rows.insert

        async def slow_insert(record: Any) -> Any:
            row = await real_insert(record)  # the row is in the database ...
            written.set()
            await answered.wait()  # ... and the caller gives up before hearing so
            return row

        rows.insert = slow_insert  # type: ignore[method-assign]
        spec = vms.spec_for(VmType.CLI, None, None)
        create = asyncio.create_task(vms.create(user_id="erin", spec=spec, wait=False))
        await written.wait()
        create.cancel()
        await asyncio.sleep(0)
        answered.set()
        with pytest.raises(asyncio.CancelledError):
            await create
        rows.insert = real_insert  # type: ignore[method-assign]
        left = await rows.list(user_id="erin")
        assert [row.status.value for row in left] == ["destroyed"]
        assert api.backend.created == []
        # The quota of one CLI VM is free again.
        erin = api.headers(await api.user_key("erin"))
        assert (await api.client.post("/api/vms", json={}, headers=erin)).status_code == 201


async def test_memory_admission_refuses_with_429(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    # Room for one VM of the default 512 MiB and not for a second.
    quotas = Quotas(
        per_user={VmType.CLI: 5, VmType.BROWSER: 1}, max_browser_vms=1, memory_limit_mib=700
    )
    async with running_api(api_settings, fake_backend, tmp_path / "image", quotas=quotas) as api:
        admin = api.headers()
        assert (
            await api.client.post("/api/vms", json={"userId": "jo"}, headers=admin)
        ).status_code == 201
        error = assert_error(
            await api.client.post("/api/vms", json={"userId": "kim"}, headers=admin),
            429,
            "capacity_exhausted",
        )
        assert "memory" in error["message"]
        assert len((await api.client.get("/api/vms", headers=admin)).json()["vms"]) == 1
        assert len(api.backend.created) == 1


async def test_host_wide_browser_vm_limit_is_429_and_creates_nothing(
    api_settings: Settings, fake_backend: FakeBackend, tmp_path: Path
) -> None:
    quotas = Quotas(
        per_user={VmType.CLI: 1, VmType.BROWSER: 1}, max_browser_vms=0, memory_limit_mib=8192
    )
    async with running_api(api_settings, fake_backend, tmp_path / "image", quotas=quotas) as api:
        error = assert_error(
            await api.client.post(
                "/api/vms", json={"userId": "max", "vmType": "browser"}, headers=api.headers()
            ),
            429,
            "capacity_exhausted",
        )
        assert "Browser VMs" in error["message"]
        assert (await api.client.get("/api/vms", headers=api.headers())).json()["vms"] == []
        assert api.backend.created == []


# --- bodies and routes that do not exist -------------------------------------------------------


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
    api: Api, body: dict[str, Any], field: str
) -> None:
    error = assert_error(
        await api.client.post("/api/vms", json={"userId": "erin", **body}, headers=api.headers()),
        422,
        "invalid_input",
    )
    assert field in error["message"]
    assert (await api.client.get("/api/vms", headers=api.headers())).json()["vms"] == []
    assert api.backend.created == []


async def test_malformed_json_is_400_and_unknown_routes_are_json_404(api: Api) -> None:
    response = await api.client.post(
        "/api/vms",
        content=b"{not json",
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert_error(response, 400, "malformed_json")
    assert_error(await api.client.get("/api/nothing", headers=api.headers()), 404, "not_found")
    assert_error(await api.client.put("/api/vms", headers=api.headers()), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/vms", "GET, POST"),
        ("POST", "/api/vms/vm-x", "GET, PATCH, DELETE"),
        ("GET", "/api/vms/vm-x/pause", "POST"),
        ("POST", "/health", "GET"),
    ],
)
async def test_a_405_names_every_method_the_path_serves(
    api: Api, method: str, path: str, allow: str
) -> None:
    # Routes live in included routers, which a flat listing of the app's routes does not show:
    # the header went out empty.
    response = await api.client.request(method, path, headers=api.headers())
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


# --- a VM's life through the API ----------------------------------------------------------------


async def test_wait_false_answers_202_then_the_vm_becomes_ready(api: Api) -> None:
    api.backend.hold = asyncio.Event()  # the VM keeps booting until released
    try:
        response = await api.client.post(
            "/api/vms?wait=false", json={"userId": "frank"}, headers=api.headers()
        )
        assert response.status_code == 202
        vm = response.json()
        assert vm["status"] in ("creating", "booting")
        assert vm["agentToken"] is None
    finally:
        api.backend.hold.set()
    await until_status(api, vm["id"], "ready")


async def test_pause_resume_and_destroy_through_the_api(api: Api) -> None:
    admin = api.headers()
    vm = (await api.client.post("/api/vm/create", json={"userId": "gina"}, headers=admin)).json()
    assert vm["status"] == "ready"
    paused = await api.client.post(f"/api/vms/{vm['id']}/pause", headers=admin)
    assert paused.json()["status"] == "paused"
    assert_error(
        await api.client.post(f"/api/vms/{vm['id']}/pause", headers=admin), 409, "conflict"
    )
    resumed = await api.client.post(f"/api/vms/{vm['id']}/resume", headers=admin)
    assert resumed.json()["status"] == "ready"
    destroyed = await api.client.delete(f"/api/vms/{vm['id']}", headers=admin)
    assert destroyed.json()["status"] == "destroyed"
    again = await api.client.delete(f"/api/vms/{vm['id']}", headers=admin)
    assert again.json()["status"] == "destroyed"
    assert api.backend.destroyed == [vm["id"]]
    assert vm["id"] not in api.backend.running


async def test_a_vm_whose_process_dies_is_failed_within_seconds(api: Api) -> None:
    vm = (await api.client.post("/api/vms", json={"userId": "hank"}, headers=api.headers())).json()
    api.backend.kill(vm["id"])  # as a VMM that dies: the monitor must notice
    failed = await until_status(api, vm["id"], "failed")
    assert "exited" in failed["error"]
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_vm_failures_total{stage="running"} 1.0' in metrics


# --- what the controller tells about itself ---------------------------------------------------


async def test_metrics_show_vms_boot_histogram_and_http_requests(api: Api) -> None:
    created = await api.client.post("/api/vms", json={"userId": "ivy"}, headers=api.headers())
    assert created.status_code == 201
    text = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_vms{status="ready"} 1.0' in text
    assert "hearth_vm_create_to_healthy_seconds_bucket" in text
    assert 'route="/api/vms"' in text
    assert api.admin_key not in text


async def test_every_answer_carries_a_request_id_and_is_counted_under_its_route(
    api: Api,
) -> None:
    given = await api.client.get(
        "/api/vms/vm-none", headers={**api.headers(), "X-Request-Id": "trace-42"}
    )
    minted = await api.client.get("/api/vms", headers=api.headers())
    text = (await api.client.get("/metrics", headers=api.headers())).text
    assert_error(given, 404, "not_found")
    assert given.headers["x-request-id"] == "trace-42"
    assert minted.status_code == 200
    assert len(minted.headers["x-request-id"]) == 16
    assert (
        'hearth_http_requests_total{method="GET",route="/api/vms/{vm_id}",status="404"} 1.0' in text
    )
    assert 'hearth_http_requests_total{method="GET",route="/api/vms",status="200"}' in text
    # A method a client made up is counted, but not by its name: series stay bounded.
    for made_up in ("X0", "Y1"):
        await api.client.request(made_up, "/health")
    text = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'method="other"' in text
    assert 'method="X0"' not in text
    assert 'method="Y1"' not in text
    # Every stage a VM can fail at is exported from the start, so an alert sees its first failure.
    for stage in ("boot", "workspace", "running", "restart", "unhealthy", "hibernate", "wake"):
        assert f'hearth_vm_failures_total{{stage="{stage}"}} 0.0' in text


async def test_openapi_describes_every_route(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    for path in ("/api/vms", "/api/vms/{vm_id}", "/api/keys", "/health", "/metrics"):
        assert path in spec["paths"]
