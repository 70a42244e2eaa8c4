"""``POST /api/vms/{id}/agent/update`` over a CLI VM whose agent port answers as its root chooses,
in process on SQLite and PostgreSQL (the fake backend's VM, its agent address pointed at a
stand-in on loopback): what the guest says of a failed update (its refusal, the reason it went
back) is cut before it lands in the result and in the ``agent.update_failed`` event, which the
store keeps for weeks and sends to every webhook, never kept whole (megabytes each time).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hearth.agent_answers import GUEST_TEXT_CHARS
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, served

GUEST_TEXT = "A" * 3_000_000
OLD = "0.0.9"


def agent_port(*, refuse: bool) -> Starlette:
    """A stand-in agent that refuses an update with ``GUEST_TEXT`` (``refuse``), or takes it and
    then answers its old version, its guard saying ``GUEST_TEXT`` of why it went back."""

    async def update(request: Request) -> Response:
        await request.body()
        if refuse:
            return JSONResponse({"error": {"code": "nope", "message": GUEST_TEXT}}, 500)
        return JSONResponse({"accepted": True}, 202)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": OLD})

    async def version(request: Request) -> Response:
        return JSONResponse({"version": OLD, "update": {"ok": False, "error": GUEST_TEXT}})

    return Starlette(
        routes=[
            Route("/agent/update", update, methods=["POST"]),
            Route("/health", health),
            Route("/version", version),
        ]
    )


async def update_failing(api: Api, *, refuse: bool) -> tuple[dict[str, Any], list[bytes]]:
    """The result of updating a new VM whose agent answers by ``agent_port(refuse=...)``, and
    the data of every ``agent.update_failed`` event stored."""
    vm_id = await vm_for(api, "ann")
    await api.ctl.store.vms.update(vm_id, agent_version=OLD)
    api.ctl.agent_updates.deadline_s = 0.2  # the guard's verdict is in already
    async with served(agent_port(refuse=refuse)) as url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = url
        updated = await api.client.post(
            f"/api/vms/{vm_id}/agent/update", json={"force": True}, headers=api.headers()
        )
    assert updated.status_code == 200, updated.text[:300]
    events = await api.ctl.store.events.list(after=0, limit=100)
    failed = [json.dumps(e.data).encode() for e in events if e.type == "agent.update_failed"]
    result: dict[str, Any] = updated.json()
    return result, failed


async def test_a_guests_refusal_of_an_update_is_cut_in_its_result_and_event(api: Api) -> None:
    result, (event,) = await update_failing(api, refuse=True)
    assert result["status"] == "failed"
    assert result["error"].startswith("the agent refused the update: the agent of VM vm-")
    assert "A" * 100 in result["error"]
    assert len(result["error"]) < GUEST_TEXT_CHARS + 200
    assert len(event) < GUEST_TEXT_CHARS + 1000


async def test_a_guests_reason_for_going_back_is_cut_in_its_result_and_event(api: Api) -> None:
    result, (event,) = await update_failing(api, refuse=False)
    assert result["status"] == "rolled_back"
    assert result["error"].startswith("rolled back in the VM: AAAA")
    assert len(result["error"]) < GUEST_TEXT_CHARS + 200
    assert len(event) < GUEST_TEXT_CHARS + 1000
