"""One user's key tells nothing of, and takes nothing from, other users' VMs, in process on
SQLite and PostgreSQL: a Browser VM (the login flow's, counted against the host-wide limit and
given no lifetime) is made only with an admin key, and another user's pause or resume of a VM is
404 at once, busy or not, as for a VM that does not exist."""

from __future__ import annotations

import asyncio

from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error

# Long enough for any machine: a call that waited for the VM's turn never ends while the test
# holds it, and this turns that hang into a failure (no duration is asserted).
HANG_GUARD_S = 30


async def test_a_user_key_asking_for_a_browser_vm_is_403_and_nothing_is_made(api: Api) -> None:
    ann = api.headers(await api.user_key("ann"))
    for path in ("/api/vms", "/api/vms?wait=false", "/api/vm/create"):
        for body in ({"vmType": "browser"}, {"vmType": "browser", "userId": "ann"}):
            refused = await api.client.post(path, json=body, headers=ann)
            assert "admin" in assert_error(refused, 403, "forbidden")["message"]
    assert await api.ctl.store.vms.list() == []
    assert api.backend.running == {}
    # Her CLI VMs are hers to make; a Browser VM for her, the admin's.
    assert (await api.client.post("/api/vms", json={}, headers=ann)).status_code == 201
    as_admin = {"vmType": "browser", "userId": "ann"}
    made = await api.client.post("/api/vms", json=as_admin, headers=api.headers())
    assert made.status_code == 201, made.text
    assert made.json()["userId"] == "ann"


async def test_the_route_documents_the_403(api: Api) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    assert "403" in paths["/api/vms"]["post"]["responses"]
    assert "Browser" in paths["/api/vms"]["post"]["responses"]["403"]["description"]


async def test_another_users_pause_or_resume_of_a_busy_vm_is_404_without_its_turn(
    api: Api,
) -> None:
    ann = api.headers(await api.user_key("ann"))
    bob = api.headers(await api.user_key("bob"))
    vm_id = (await api.client.post("/api/vms", json={}, headers=ann)).json()["id"]
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_its_turn() -> None:  # as ann's hibernation or teardown holds it
        async with api.ctl.vms.turns.held(vm_id):
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold_its_turn())
    await held.wait()
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            for action in ("pause", "resume"):
                answer = await api.client.post(f"/api/vms/{vm_id}/{action}", headers=bob)
                assert_error(answer, 404, "not_found")
        assert not release.is_set()  # answered while ann's turn was still held
    finally:
        release.set()
        await holder
    # Hers still go through, in turn.
    assert (await api.client.post(f"/api/vms/{vm_id}/pause", headers=ann)).status_code == 200
    assert (await api.client.post(f"/api/vms/{vm_id}/resume", headers=ann)).status_code == 200
