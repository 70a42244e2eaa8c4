"""``GET /api/vms/{id}/runs/{runId}/events`` against a run whose oldest events were forgotten.

Only a run's newest ``HEARTH_RUN_EVENTS_KEEP`` events are kept. A reader that needs one no
longer kept, resuming after an old id or reading from the start, is answered 410 ``events_gone``
(documented for the route) rather than given a stream that silently begins later; a run whose
events are all kept streams from its first, also while more come. In process on the fake
backend: the run's rows and events are written to the real store as its pump writes them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_sse import aconnect_sse

from hearth.api.app import create_app
from hearth.config import Settings
from hearth.errors import EventsGone
from hearth.runs.states import RunStatus
from hearth.sdk import AsyncHearth, HearthApiError
from hearth.store.records import RunEventRecord, RunRecord
from hearth_agent.wire import Provider
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error
from tests.unit.test_error_tree import ERRORS

EVENTS_PATH = "/api/vms/{vm_id}/runs/{run_id}/events"
KEEP = 5


async def running_run(api: Api, user_id: str) -> tuple[str, str, dict[str, str]]:
    """A running run of a new VM of ``user_id``, without events: its VM id, its id, and the
    admin's headers."""
    headers = api.headers()
    created = await api.client.post("/api/vms", json={"userId": user_id}, headers=headers)
    vm_id = created.json()["id"]
    run = await api.ctl.store.runs.insert(
        RunRecord(user_id=user_id, vm_id=vm_id, provider=Provider.CLAUDE_CODE, timeout_s=60)
    )
    await api.ctl.store.runs.transition(run.id, RunStatus.STARTING, RunStatus.RUNNING)
    return vm_id, run.id, headers


def deltas(run_id: str, ids: range) -> list[RunEventRecord]:
    return [
        RunEventRecord(
            run_id=run_id, seq=i, type="message.delta", data=json.dumps({"text": f"{i}"})
        )
        for i in ids
    ]


async def append(api: Api, run_id: str, ids: range) -> None:
    """Store events ``ids`` of the run, keeping the newest ``KEEP``, as its pump does."""
    await api.ctl.store.runs.append_events(
        run_id, deltas(run_id, ids), exec_cursor=ids[-1], keep=KEEP
    )


async def complete(api: Api, run_id: str, last: int) -> None:
    """End the run with event ``last``, its ``run.completed``."""
    done = RunEventRecord(run_id=run_id, seq=last, type="run.completed", data="{}")
    await api.ctl.store.runs.end(
        run_id, [done], status=RunStatus.COMPLETED, exec_cursor=last, keep=KEEP
    )


async def stream_ids(api: Api, url: str, headers: dict[str, str]) -> list[int]:
    """The ids of the event stream at ``url`` (200), to its end."""
    async with aconnect_sse(api.client, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        return [int(sse.id) async for sse in source.aiter_sse()]


async def test_reading_from_the_start_when_the_first_events_are_forgotten_is_410(
    api: Api,
) -> None:
    vm_id, run_id, headers = await running_run(api, "fay")
    await append(api, run_id, range(1, 10))
    await complete(api, run_id, 10)  # events 1 to 5 forgotten
    url = EVENTS_PATH.format(vm_id=vm_id, run_id=run_id)
    for sent in ({}, {"Last-Event-ID": "0"}):
        error = assert_error(
            await api.client.get(url, headers={**headers, **sent}), 410, "events_gone"
        )
        assert "from id 6 on" in error["message"]
        assert "events 1 to 5 are no longer kept" in error["message"]
        assert "Last-Event-ID 5" in error["message"]
    assert_error(await api.client.get(f"{url}?after=0", headers=headers), 410, "events_gone")
    # What is kept is read by resuming where the message says.
    assert await stream_ids(api, url, {**headers, "Last-Event-ID": "5"}) == [6, 7, 8, 9, 10]


async def test_the_sdk_reading_from_the_start_raises_events_gone_not_a_shortened_answer(
    api: Api,
) -> None:
    vm_id, run_id, headers = await running_run(api, "gus")
    await append(api, run_id, range(1, 10))
    await complete(api, run_id, 10)
    key = headers["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=api.app)
    async with AsyncHearth("http://hearth.test", key, transport=transport) as client:
        vm = await client.vms.get(vm_id)
        with pytest.raises(HearthApiError) as caught:
            _ = [event async for event in vm.run_events(run_id)]
        assert (caught.value.status, caught.value.code) == (410, "events_gone")
        kept = [event.id async for event in vm.run_events(run_id, after=5)]
    assert kept == [6, 7, 8, 9, 10]


async def test_a_resume_behind_what_is_kept_is_410_as_the_route_documents(api: Api) -> None:
    vm_id, run_id, headers = await running_run(api, "hal")
    await append(api, run_id, range(1, 11))  # running, events 1 to 5 forgotten
    url = EVENTS_PATH.format(vm_id=vm_id, run_id=run_id)
    answer = await api.client.get(url, headers={**headers, "Last-Event-ID": "2"})
    error = assert_error(answer, 410, "events_gone")
    spec = (await api.client.get("/openapi.json")).json()
    documented = spec["paths"][EVENTS_PATH]["get"]["responses"]
    assert "410" in documented, "the route answers 410 without documenting it"
    assert documented["410"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"
    }
    assert "events_gone" in documented["410"]["description"]
    assert "events 3 to 5 are no longer kept" in error["message"]


async def test_a_run_whose_events_are_all_kept_streams_from_its_first(api: Api) -> None:
    vm_id, run_id, headers = await running_run(api, "ida")
    await append(api, run_id, range(1, 5))
    await complete(api, run_id, 5)  # exactly KEEP events: none forgotten
    url = EVENTS_PATH.format(vm_id=vm_id, run_id=run_id)
    assert await stream_ids(api, url, headers) == [1, 2, 3, 4, 5]
    assert await stream_ids(api, url, {**headers, "Last-Event-ID": "0"}) == [1, 2, 3, 4, 5]


async def test_a_stream_from_the_start_follows_events_as_they_come(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events stored without the pump wake no reader: it looks again every READER_POLL_S.
    monkeypatch.setattr("hearth.control.runs.READER_POLL_S", 0.05)
    vm_id, run_id, headers = await running_run(api, "jon")
    await append(api, run_id, range(1, 3))
    url = EVENTS_PATH.format(vm_id=vm_id, run_id=run_id)
    reading = asyncio.create_task(stream_ids(api, url, headers))
    reader = await api.ctl.runs.events(vm_id, run_id, None)
    assert [(await anext(reader)).seq, (await anext(reader)).seq] == [1, 2]
    following = asyncio.create_task(_rest(reader))
    await asyncio.sleep(0.2)  # both readers wait for more
    await append(api, run_id, range(3, 5))
    await asyncio.sleep(0.2)
    await complete(api, run_id, 5)
    assert await asyncio.wait_for(following, 10) == [3, 4, 5]
    assert await asyncio.wait_for(reading, 10) == [1, 2, 3, 4, 5]


async def _rest(reader: AsyncIterator[RunEventRecord]) -> list[int]:
    return [event.seq async for event in reader]


async def test_a_reader_from_the_start_whose_first_events_go_before_it_reads_is_ended(
    api: Api,
) -> None:
    # Checked when it opened, the run had all its events; forgotten before its first read, the
    # reader must end (its reconnect is told 410), not begin silently at the first kept.
    vm_id, run_id, _ = await running_run(api, "kim")
    await append(api, run_id, range(1, 4))
    reader = await api.ctl.runs.events(vm_id, run_id, None)
    await append(api, run_id, range(4, 11))  # events 1 to 5 forgotten
    assert await asyncio.wait_for(_rest(reader), 5) == []
    with pytest.raises(EventsGone):
        await api.ctl.runs.events(vm_id, run_id, None)


def test_every_status_a_hearth_error_answers_is_documented_somewhere() -> None:
    # A status every route may answer is in ERROR_STATUSES; any other must be listed by the
    # route(s) answering it (events_gone's 410 once was by none).
    spec = create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()
    documented = {
        int(status)
        for operations in spec["paths"].values()
        for operation in operations.values()
        for status in operation.get("responses", {})
        if status.isdigit()
    }
    answered = {cls.http_status: cls.__qualname__ for cls in ERRORS if cls.http_status >= 400}
    missing = {status: name for status, name in answered.items() if status not in documented}
    assert not missing, f"statuses no route documents: {missing}"
