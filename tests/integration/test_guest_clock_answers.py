"""The guest's clock after a resume or a wake, when the guest's root answers ``POST /clock`` as
it chooses: in process on SQLite and PostgreSQL, over the fake backend, whose VMs, once run
again, answer on a stand-in agent on loopback.

Setting the clock is best effort once the VM runs again: an offset that is no number of seconds
a clock can be off (an integer too large for a float, NaN, infinity, a string, a bool) is the
agent's error, logged as ``vm_clock_not_set`` with the VM's id; and however the setting ends
(even cut short), the VM's row says what the VM is: ``ready``, never ``paused`` or ``booting``
while it runs (a paused VM's lifetime stands still, so it would outlive it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from structlog.testing import capture_logs

from hearth.vm.types import Vm, VmState
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, served

HUGE = "1" + "0" * 400  # valid JSON; Python decodes it to an int no float holds
HOSTILE_OFFSETS = {
    "huge-int": HUGE,
    "nan": "NaN",
    "infinity": "-Infinity",
    "string": '"12"',
    "bool": "true",
    "out-of-range": "1e11",
}


class ClockStandIn:
    """A guest's agent port, as its root chooses: ``POST /clock`` answers ``clockSet: true``
    with ``offset`` (raw JSON); with ``hold`` set, only once it is set. ``asked`` is set when
    the clock is asked for."""

    def __init__(self) -> None:
        self.offset = "1.5"
        self.hold: asyncio.Event | None = None
        self.asked = asyncio.Event()
        self.app = FastAPI()
        self.app.add_api_route("/clock", self._clock, methods=["POST"])

    async def _clock(self, request: Request) -> Response:
        self.asked.set()
        if self.hold is not None:
            await self.hold.wait()
        body = f'{{"clockSet": true, "offsetS": {self.offset}}}'
        return Response(body, media_type="application/json")


class StandInBackend(FakeBackend):
    """The fake backend whose VMs, once resumed or woken, answer at ``agent_url``."""

    agent_url: str | None = None

    async def resume(self, vm: Vm) -> None:
        """Running again, answering on the stand-in."""
        await super().resume(vm)
        vm.agent_url = self.agent_url

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        """Running again from its saved state, answering on the stand-in."""
        woken = await super().wake(vm, state_key)
        woken.agent_url = self.agent_url
        return woken


@pytest.fixture
async def guest() -> AsyncIterator[ClockStandIn]:
    """The stand-in agent (a held answer let go at the end)."""
    stand_in = ClockStandIn()
    yield stand_in
    if stand_in.hold is not None:
        stand_in.hold.set()


@pytest.fixture
async def fake_backend(guest: ClockStandIn) -> AsyncIterator[FakeBackend]:
    """The backend ``api`` runs over, its woken VMs answering on the served stand-in."""
    backend = StandInBackend()
    async with served(guest.app) as url:
        backend.agent_url = url
        yield backend
        if guest.hold is not None:
            guest.hold.set()  # before the server waits for its connections


async def asleep_vm(api: Api, asleep: str) -> str:
    """A ready CLI VM of ann's, then paused or hibernated; its id."""
    created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    assert created.status_code == 201, created.text
    vm_id: str = created.json()["id"]
    action = "hibernate" if asleep == "hibernated" else "pause"
    moved = await api.client.post(f"/api/vms/{vm_id}/{action}", headers=api.headers())
    assert (moved.status_code, moved.json()["status"]) == (200, asleep), moved.text
    return vm_id


async def row_status(api: Api, vm_id: str) -> str:
    status: str = (await api.ctl.store.vms.get(vm_id)).status.value
    return status


async def resumed_ready(
    api: Api, guest: ClockStandIn, vm_id: str, offset: str
) -> list[MutableMapping[str, Any]]:
    """Resume VM ``vm_id``, its guest answering ``offset``: 200, the VM and its row ready; the
    logs of the resume."""
    guest.offset = offset
    with capture_logs() as logs:
        resumed = await api.client.post(f"/api/vms/{vm_id}/resume", headers=api.headers())
    assert (resumed.status_code, resumed.json()["status"]) == (200, "ready"), resumed.text
    assert await row_status(api, vm_id) == "ready"
    return logs


def logged(
    logs: list[MutableMapping[str, Any]], vm_id: str, event: str
) -> list[MutableMapping[str, Any]]:
    return [r for r in logs if r.get("vm_id") == vm_id and r["event"] == event]


@pytest.mark.parametrize("asleep", ["paused", "hibernated"])
@pytest.mark.parametrize("offset", list(HOSTILE_OFFSETS.values()), ids=list(HOSTILE_OFFSETS))
async def test_an_offset_that_is_no_number_of_seconds_is_a_warning_and_the_vm_runs_ready(
    api: Api, guest: ClockStandIn, asleep: str, offset: str
) -> None:
    vm_id = await asleep_vm(api, asleep)
    logs = await resumed_ready(api, guest, vm_id, offset)
    assert api.backend.running[vm_id].state is VmState.READY
    (warning,) = logged(logs, vm_id, "vm_clock_not_set")
    assert warning["log_level"] == "warning"
    assert "not a number of seconds" in warning["reason"], warning
    assert len(warning["reason"]) < 200  # the guest's answer cut short
    if asleep == "hibernated":
        (woken,) = logged(logs, vm_id, "vm_woken")
        assert (woken["clock_set"], woken["clock_offset_s"]) == (False, None)


@pytest.mark.parametrize("asleep", ["paused", "hibernated"])
@pytest.mark.parametrize("offset", ["-3600", "157680000.25"], ids=["an-hour-ahead", "5-years"])
async def test_an_offset_a_clock_can_be_off_is_taken_without_a_warning(
    api: Api, guest: ClockStandIn, asleep: str, offset: str
) -> None:
    vm_id = await asleep_vm(api, asleep)
    logs = await resumed_ready(api, guest, vm_id, offset)
    assert logged(logs, vm_id, "vm_clock_not_set") == []
    if asleep == "hibernated":
        (woken,) = logged(logs, vm_id, "vm_woken")
        assert (woken["clock_set"], woken["clock_offset_s"]) == (True, float(offset))


@pytest.mark.parametrize("asleep", ["paused", "hibernated"])
async def test_a_resume_given_up_while_the_guest_holds_its_clock_answer_leaves_the_row_ready(
    api: Api, guest: ClockStandIn, asleep: str
) -> None:
    vm_id = await asleep_vm(api, asleep)
    guest.hold = asyncio.Event()
    resume = asyncio.create_task(api.ctl.vms.resume(vm_id))
    await asyncio.wait_for(guest.asked.wait(), timeout=10)
    resume.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await resume
    assert await row_status(api, vm_id) == "ready"  # as the VM is: running
    assert api.backend.running[vm_id].state is VmState.READY
    assert api.ctl.vms.alive(vm_id)
