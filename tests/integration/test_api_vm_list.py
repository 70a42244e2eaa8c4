"""``GET /api/vms`` a page at a time, in process on SQLite and PostgreSQL: VMs not destroyed by
default (failed ones too), ``?status=`` (repeated or comma-separated), ``?limit=``, and pages
that follow ``nextAfter`` in creation order without skipping a VM when others end between two
pages; the SDK (sync and async) and ``hearth vm list`` read every page.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hearth.cli import app as cli_app
from hearth.errors import VmError
from hearth.sdk import AsyncHearth, Hearth
from hearth.store import VmRecord
from hearth.store.records import utc_now
from hearth.vm.types import VmState, VmType
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import BASE_URL, Api, assert_error, served

SEEDED = 105  # past the default page of 100


async def new_vm(api: Api, user_id: str, **body: object) -> str:
    """A ready VM of ``user_id``'s (made with the admin key); its id."""
    created = await api.client.post(
        "/api/vms", json={"userId": user_id, **body}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    vm_id: str = created.json()["id"]
    return vm_id


async def listed(api: Api, query: str = "", key: str | None = None) -> dict[str, Any]:
    """The answer of ``GET /api/vms?<query>``."""
    answer = await api.client.get(f"/api/vms?{query}", headers=api.headers(key))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def ids(page: dict[str, Any]) -> list[str]:
    """The ids of a page's VMs, in order."""
    return [vm["id"] for vm in page["vms"]]


async def seed_destroyed(api: Api, user_id: str, count: int) -> list[str]:
    """``count`` destroyed VMs of ``user_id`` written straight to the store (half of them made at
    one instant: their order is their ids'); their ids in listing order."""
    await api.ctl.store.users.ensure(user_id)
    start = utc_now() - timedelta(hours=1)
    made = []
    for n in range(count):
        record = VmRecord(
            id=f"vm-seed-{user_id}-{count - n:04d}",
            user_id=user_id,
            vm_type=VmType.CLI,
            backend="fake",
            vcpus=1,
            mem_mib=256,
            status=VmState.DESTROYED,
            created_at=start + timedelta(seconds=n // 2),
        )
        made.append(await api.ctl.store.vms.insert(record))
    return [r.id for r in sorted(made, key=lambda r: (r.created_at, r.id))]


async def test_the_list_leaves_out_destroyed_vms_unless_asked_for(api: Api) -> None:
    ended, running = await new_vm(api, "ann"), await new_vm(api, "ann")
    await api.client.delete(f"/api/vms/{ended}", headers=api.headers())
    api.backend.fail_next = VmError("the fake VMM failed")
    await api.client.post("/api/vms", json={"userId": "bob"}, headers=api.headers())
    [failed] = [r.id for r in await api.ctl.store.vms.list(statuses=[VmState.FAILED])]

    assert ids(await listed(api)) == [running, failed]
    assert ids(await listed(api, "status=destroyed")) == [ended]
    assert ids(await listed(api, "status=destroyed,ready")) == [ended, running]
    assert ids(await listed(api, "status=ready&status=failed")) == [running, failed]
    failed_vm = (await listed(api, "status=failed"))["vms"][0]
    assert failed_vm["error"] == "the fake VMM failed"
    assert (await listed(api))["nextAfter"] is None


@pytest.mark.parametrize(
    "query",
    ["status=running", "status=ready,", "status=", "limit=0", "limit=1001", "after=vm-nobody"],
)
async def test_a_query_the_list_cannot_serve_is_422(api: Api, query: str) -> None:
    assert_error(
        await api.client.get(f"/api/vms?{query}", headers=api.headers()), 422, "invalid_input"
    )


async def test_pages_follow_next_after_and_skip_no_vm_that_stays_when_others_end(api: Api) -> None:
    made = [await new_vm(api, f"user{n}") for n in range(5)]

    first = await listed(api, "limit=2")
    assert ids(first) == made[:2]
    # Ending VMs between two pages moves no other VM across the page boundary.
    for vm_id in made[:3]:
        await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())
    second = await listed(api, f"limit=2&after={first['nextAfter']}")
    assert ids(second) == made[3:5]
    assert second["nextAfter"] is None  # no VM after these: no empty page to ask for

    pages, after = [], ""
    while True:
        page = await listed(api, f"status=destroyed,ready&limit=2{after}")
        pages.append(ids(page))
        if page["nextAfter"] is None:
            break
        after = f"&after={page['nextAfter']}"
    assert pages == [made[:2], made[2:4], made[4:]]


async def test_a_user_key_pages_through_its_own_vms_only(api: Api) -> None:
    mine = await seed_destroyed(api, "ann", 5)
    theirs = await new_vm(api, "bob")
    key = await api.user_key("ann")

    first = await listed(api, "status=destroyed&limit=3", key)
    assert ids(first) == mine[:3]
    rest = await listed(api, f"status=destroyed&limit=3&after={first['nextAfter']}", key)
    assert (ids(rest), rest["nextAfter"]) == (mine[3:], None)
    # Another user's VM is no place to start from: it does not exist for this key.
    refused = await api.client.get(f"/api/vms?after={theirs}", headers=api.headers(key))
    assert_error(refused, 422, "invalid_input")


async def test_without_a_limit_a_page_holds_100_vms(api: Api) -> None:
    seeded = await seed_destroyed(api, "ann", SEEDED)

    first = await listed(api, "status=destroyed")
    assert ids(first) == seeded[:100]
    assert first["nextAfter"] == seeded[99]
    assert ids(await listed(api, "status=destroyed&limit=1000")) == seeded


async def test_the_openapi_document_describes_the_paging(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    operation = document["paths"]["/api/vms"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"status", "after", "limit"}
    assert parameters["limit"]["schema"]["maximum"] == 1000
    assert "422" in operation["responses"]
    assert "nextAfter" in document["components"]["schemas"]["VmList"]["properties"]


async def test_the_sdk_reads_every_page_sync_and_async(api: Api) -> None:
    seeded = await seed_destroyed(api, "ann", SEEDED)
    running = await new_vm(api, "ann")
    key = await api.user_key("ann")

    transport = httpx.ASGITransport(app=api.app)
    async with AsyncHearth(BASE_URL, key, transport=transport) as client:
        assert [vm.id for vm in await client.vms.list()] == [running]
        assert [vm.id for vm in await client.vms.list(status=["destroyed"])] == seeded
        assert [vm.id for vm in await client.vms.list(status="destroyed")] == seeded

    async with served(api.app) as url:

        def sync_list() -> tuple[list[str], list[str]]:
            with Hearth(url, key) as client:
                everything = client.vms.list(status=["destroyed", "ready"])
                return [vm.id for vm in client.vms.list()], [vm.id for vm in everything]

        assert await asyncio.to_thread(sync_list) == ([running], [*seeded, running])


async def test_hearth_vm_list_reads_every_page(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = await seed_destroyed(api, "ann", SEEDED)
    async with served(api.app) as url:
        monkeypatch.setenv("HEARTH_URL", url)
        monkeypatch.setenv("HEARTH_API_KEY", api.admin_key)
        monkeypatch.setenv("COLUMNS", "200")

        def vm_list() -> str:
            result = CliRunner().invoke(cli_app, ["vm", "list", "--status", "destroyed"])
            assert result.exit_code == 0, result.output
            return result.output

        output = await asyncio.to_thread(vm_list)
    assert [vm_id for vm_id in seeded if vm_id in output] == seeded
