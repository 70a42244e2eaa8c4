"""``/api/vms/{id}/runs`` in process, on SQLite and PostgreSQL: the run service's own logic.

The VMs' agents are real processes on loopback (``AgentBackend``), the credential is captured
and delivered by the auth flow's own code, and the run's command is the real one, except that
its program is ``fake_run_cli.py``, which replays lines the real CLIs printed (what the
provider's parser maps is real). Storing, streaming, resuming, cancelling, timeouts, the
refusals and a controller restart are checked here; the real CLIs against provider stand-ins,
in real VMs, are in ``tests/vm/test_runs.py``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from hearth.errors import EventsGone
from hearth.sdk import AsyncHearth
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.run_fixtures import *  # noqa: F403
from tests.integration.run_fixtures import (
    ANSWER,
    RUN_CAP,
    Controller,
    alive,
    events_of,
    fake_command,
    logged_in_vm,
    script,
    start,
    text_of,
    vm_status,
)
from tests.integration.run_lines import answer_lines, capture


async def test_a_run_streams_the_answer_in_order_and_completes_with_usage(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "ann")
    run = await start(api_runs, vm_id, headers, script(answer_lines("claude_code")))
    assert run["status"] == "running"
    assert run["provider"] == "claude_code"
    events = await events_of(api_runs, vm_id, run["id"], headers)
    ids = [event_id for event_id, _, _ in events]
    assert ids == list(range(1, len(events) + 1))
    assert events[0][1] == "run.started"
    assert events[-1][1] == "run.completed"
    assert text_of(events) == ANSWER
    assert events[-1][2]["usage"]["outputTokens"] > 0
    final = await api_runs.client.get(f"/api/vms/{vm_id}/runs/{run['id']}", headers=headers)
    body = final.json()
    assert body["status"] == "completed"
    assert body["sessionId"] == events[-1][2]["sessionId"]
    assert body["usage"] == events[-1][2]["usage"]
    assert body["exitCode"] == 0
    assert body["lastEventId"] == ids[-1]
    listed = await api_runs.client.get(f"/api/vms/{vm_id}/runs", headers=headers)
    assert [r["id"] for r in listed.json()["runs"]] == [run["id"]]


async def test_reading_an_ended_run_leaves_nothing_behind_in_the_controller(
    api_runs: Api,
) -> None:
    # Each read of an ended run's events left a wakeup that nothing would set or remove.
    vm_id, headers = await logged_in_vm(api_runs, "uma")
    run = await start(api_runs, vm_id, headers, script(answer_lines("claude_code")))
    for _ in range(3):
        assert (await events_of(api_runs, vm_id, run["id"], headers))[-1][1] == "run.completed"
    assert run["id"] not in api_runs.ctl.runs._wakeups


async def test_the_async_sdk_streams_a_run_as_the_sync_one_does(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "ann")
    key = headers["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=api_runs.app)
    async with AsyncHearth("http://hearth.test", key, transport=transport) as client:
        vm = await client.vms.get(vm_id)
        prompt = script(answer_lines("claude_code"))
        events = [event async for event in vm.run_stream("claude_code", prompt)]
    assert (events[0].type, events[-1].type) == ("run.started", "run.completed")
    assert "".join(e.data["text"] for e in events if e.type == "message.delta") == ANSWER


@pytest.mark.parametrize(
    ("failure", "code"),
    [("unauthorized", "not_logged_in"), ("rate_limited", "rate_limited")],
)
async def test_provider_errors_end_the_run_with_their_code(
    api_runs: Api, failure: str, code: str
) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "bob")
    failed = capture("claude_code", failure)
    prompt = script(failed.lines, exit=failed.exit_code, stderr=failed.stderr)
    run = await start(api_runs, vm_id, headers, prompt)
    events = await events_of(api_runs, vm_id, run["id"], headers)
    assert events[-1][1] == "run.failed"
    assert events[-1][2]["code"] == code
    assert "sk-ant" not in json.dumps(events)
    body = (await api_runs.client.get(f"/api/vms/{vm_id}/runs/{run['id']}", headers=headers)).json()
    assert body["status"] == "failed"
    assert body["failure"]["code"] == code


async def test_a_cli_that_dies_without_a_known_error_is_cli_crashed(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "cid")
    run = await start(api_runs, vm_id, headers, script([], stderr="Segmentation fault\n", exit=139))
    events = await events_of(api_runs, vm_id, run["id"], headers)
    assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "cli_crashed")


async def test_a_reconnect_with_last_event_id_gets_every_later_event_once(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "dee")
    run = await start(api_runs, vm_id, headers, script(answer_lines("claude_code"), pause_s=0.05))
    first = await events_of(api_runs, vm_id, run["id"], headers, limit=3)
    rest = await events_of(api_runs, vm_id, run["id"], headers, last_event_id=first[-1][0])
    whole = await events_of(api_runs, vm_id, run["id"], headers)
    assert first + rest == whole
    assert whole[-1][1] == "run.completed"


async def test_cancel_ends_the_run_and_everything_its_cli_started(
    api_runs: Api, tmp_path: Path
) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "eve")
    marker = tmp_path / "grandchild.pid"
    prompt = script(answer_lines("claude_code")[:2], hang=True, child=True, marker=str(marker))
    run = await start(api_runs, vm_id, headers, prompt)
    for _ in range(200):
        if marker.exists() and marker.read_text():
            break
        await asyncio.sleep(0.05)
    grandchild = int(marker.read_text())
    cancelled = await api_runs.client.post(
        f"/api/vms/{vm_id}/runs/{run['id']}/cancel", headers=headers
    )
    assert cancelled.status_code == 200, cancelled.text
    events = await events_of(api_runs, vm_id, run["id"], headers)
    assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "cancelled")
    for _ in range(40):
        if not alive(grandchild):
            break
        await asyncio.sleep(0.05)
    assert not alive(grandchild), "the CLI's grandchild outlived the cancelled run"
    again = await api_runs.client.post(f"/api/vms/{vm_id}/runs/{run['id']}/cancel", headers=headers)
    assert again.json()["status"] == "failed"


async def test_a_run_cancelled_while_its_cli_starts_is_stopped_once_it_has(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "gil")
    runs = api_runs.ctl.runs
    gate = asyncio.Event()
    start_exec = runs.execs.start

    async def slow_start(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await start_exec(*args, **kwargs)

    runs.execs.start = slow_start  # type: ignore[method-assign]
    posting = asyncio.create_task(start(api_runs, vm_id, headers, script([], hang=True)))
    listed: list[dict[str, Any]] = []
    while not listed:
        await asyncio.sleep(0.02)
        answer = await api_runs.client.get(f"/api/vms/{vm_id}/runs", headers=headers)
        listed = answer.json()["runs"]
    assert listed[0]["status"] == "starting"
    cancelled = await api_runs.client.post(
        f"/api/vms/{vm_id}/runs/{listed[0]['id']}/cancel", headers=headers
    )
    assert cancelled.status_code == 200, cancelled.text
    gate.set()
    run = await posting
    events = await asyncio.wait_for(events_of(api_runs, vm_id, run["id"], headers), 30)
    assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "cancelled")


async def test_a_reader_that_falls_behind_what_is_kept_is_ended_not_given_a_gap(
    run_settings: Settings, agents: AgentBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the newest HEARTH_RUN_EVENTS_KEEP events are kept: a reader left behind them must
    # not go on past a hole as if nothing was lost, but end, so that its reconnect is told 410.
    monkeypatch.setattr("hearth.control.runs.run_command", fake_command)
    settings = run_settings.with_overrides(run_events_keep=5)
    async with running_api(settings, agents, tmp_path / "image") as api:
        vm_id, headers = await logged_in_vm(api, "hal")
        lines = answer_lines("claude_code")
        run = await start(api, vm_id, headers, script(lines * 4, pause_s=0.05))
        reader = await api.ctl.runs.events(vm_id, run["id"], None)
        first = await anext(reader)
        while not (await api.ctl.store.runs.get(run["id"])).is_terminal:
            await asyncio.sleep(0.05)
        rest = [event.seq async for event in reader]
        assert rest == list(range(first.seq + 1, first.seq + 1 + len(rest))), "a gap was skipped"
        last = await api.ctl.store.runs.get(run["id"])
        assert (rest[-1] if rest else first.seq) < last.last_event_id
        with pytest.raises(EventsGone):
            await api.ctl.runs.events(vm_id, run["id"], None, after=rest[-1] if rest else first.seq)
        await api.ctl.runs.wait_idle()


async def test_a_run_past_its_timeout_fails_with_timeout(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "fay")
    run = await start(api_runs, vm_id, headers, script([], hang=True), timeoutS=1)
    events = await events_of(api_runs, vm_id, run["id"], headers)
    assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "timeout")


async def test_refusals_come_before_anything_starts(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "gus")
    url = f"/api/vms/{vm_id}/runs"

    async def post(body: dict[str, Any], key: dict[str, str] = headers) -> Any:
        return await api_runs.client.post(url, json=body, headers=key)

    never = await post({"provider": "codex", "prompt": "hi"})
    assert "codex" in assert_error(never, 409, "not_logged_in")["message"]
    assert_error(await post({"provider": "nope", "prompt": "hi"}), 422, "invalid_input")
    assert_error(await post({"provider": "claude_code", "prompt": ""}), 422, "invalid_input")
    assert_error(await post({"provider": "claude_code"}), 422, "invalid_input")
    too_big = {"provider": "claude_code", "prompt": "x" * (64 * 1024 + 1)}
    assert_error(await post(too_big), 413, "body_too_large")
    bad_resume = {"provider": "claude_code", "prompt": "hi", "resume": "../../etc"}
    assert_error(await post(bad_resume), 422, "invalid_input")
    other = api_runs.headers(await api_runs.user_key("hal"))
    assert_error(await post({"provider": "claude_code", "prompt": "hi"}, other), 404, "not_found")
    assert_error(
        await api_runs.client.get(f"{url}/run_0000000000000000", headers=headers), 404, "not_found"
    )
    listed = await api_runs.client.get(url, headers=headers)
    assert listed.json()["runs"] == []  # nothing refused left a row


async def test_runs_of_another_user_are_not_found(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "ida")
    run = await start(api_runs, vm_id, headers, script(answer_lines("claude_code")))
    other = api_runs.headers(await api_runs.user_key("jon"))
    for path in ("", "/events"):
        answer = await api_runs.client.get(
            f"/api/vms/{vm_id}/runs/{run['id']}{path}", headers=other
        )
        assert_error(answer, 404, "not_found")
    cancel = await api_runs.client.post(f"/api/vms/{vm_id}/runs/{run['id']}/cancel", headers=other)
    assert_error(cancel, 404, "not_found")
    await events_of(api_runs, vm_id, run["id"], headers)


async def test_a_paused_vm_refuses_a_run_naming_its_status(api_runs: Api) -> None:
    """Without autoResume (with it, the run's call resumes the VM: test_api_lifetimes)."""
    vm_id, headers = await logged_in_vm(api_runs, "kim")
    no_auto = {"autoResume": False}
    assert (
        await api_runs.client.patch(f"/api/vms/{vm_id}", json=no_auto, headers=headers)
    ).is_success
    paused = await api_runs.client.post(f"/api/vms/{vm_id}/pause", headers=headers)
    assert paused.status_code == 200, paused.text
    answer = await api_runs.client.post(
        f"/api/vms/{vm_id}/runs", json={"provider": "claude_code", "prompt": "hi"}, headers=headers
    )
    assert "paused" in assert_error(answer, 409, "conflict")["message"]


async def test_more_runs_than_the_cap_are_refused_with_429(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "lou")
    runs = [await start(api_runs, vm_id, headers, script([], hang=True)) for _ in range(RUN_CAP)]
    answer = await api_runs.client.post(
        f"/api/vms/{vm_id}/runs", json={"provider": "claude_code", "prompt": "hi"}, headers=headers
    )
    assert_error(answer, 429, "too_many_running")
    for run in runs:
        await api_runs.client.post(f"/api/vms/{vm_id}/runs/{run['id']}/cancel", headers=headers)
    listed = (await api_runs.client.get(f"/api/vms/{vm_id}/runs", headers=headers)).json()
    assert len(listed["runs"]) == RUN_CAP


async def test_a_restarted_controller_reads_on_where_it_stopped(controller: Controller) -> None:
    lines = answer_lines("claude_code")
    async with controller() as first:
        vm_id, headers = await logged_in_vm(first, "max")
        run = await start(first, vm_id, headers, script(lines, pause_s=0.3))
        seen = await events_of(first, vm_id, run["id"], headers, limit=2)
    # The controller is gone; the CLI goes on printing under the VM's agent.
    async with controller() as second:
        rest = await events_of(second, vm_id, run["id"], headers, last_event_id=seen[-1][0])
        whole = await events_of(second, vm_id, run["id"], headers)
        await second.ctl.runs.wait_idle()
    assert seen + rest == whole
    assert whole[-1][1] == "run.completed"
    assert text_of(whole) == ANSWER


async def test_a_paused_vm_is_not_woken_by_its_runs_reader(
    api_runs: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pump reads the CLI's output on its own: that is not use. It took a paused VM's
    # stalled stream for a broken one and read again through the route's gate, which resumed
    # the VM (autoResume): a pause held a minute at most while a run ran.
    monkeypatch.setattr("hearth.agent_client.EVENT_STREAM_READ_TIMEOUT_S", 0.3)
    vm_id, headers = await logged_in_vm(api_runs, "nia")
    run = await start(api_runs, vm_id, headers, script(answer_lines("claude_code"), pause_s=0.3))
    paused = await api_runs.client.post(f"/api/vms/{vm_id}/pause", headers=headers)
    assert paused.status_code == 200, paused.text
    await asyncio.sleep(2.0)  # several of the pump's reads time out meanwhile
    assert await vm_status(api_runs, vm_id, headers) == "paused"
    assert (await api_runs.ctl.runs.get(vm_id, run["id"], None)).status.value == "running"
    resumed = await api_runs.client.post(f"/api/vms/{vm_id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    whole = await events_of(api_runs, vm_id, run["id"], headers)
    assert whole[-1][1] == "run.completed"
    assert text_of(whole) == ANSWER


async def test_a_restarted_controller_waits_for_a_hibernated_vm_without_waking_it(
    controller: Controller,
) -> None:
    lines = answer_lines("claude_code")
    async with controller() as first:
        vm_id, headers = await logged_in_vm(first, "ola")
        run = await start(first, vm_id, headers, script(lines, pause_s=0.3))
        saved = await first.client.post(f"/api/vms/{vm_id}/hibernate", headers=headers)
        assert saved.status_code == 200, saved.text
    async with controller() as second:
        await asyncio.sleep(1.5)  # the re-attached pump has looked at the VM
        assert await vm_status(second, vm_id, headers) == "hibernated"
        assert (await second.ctl.runs.get(vm_id, run["id"], None)).status.value == "running"
        woken = await second.client.post(f"/api/vms/{vm_id}/resume", headers=headers)
        assert woken.status_code == 200, woken.text
        whole = await events_of(second, vm_id, run["id"], headers)
        await second.ctl.runs.wait_idle()
    assert whole[-1][1] == "run.completed"
    assert text_of(whole) == ANSWER


async def test_a_run_whose_vm_is_destroyed_fails_at_once_naming_why(api_runs: Api) -> None:
    vm_id, headers = await logged_in_vm(api_runs, "pia")
    run = await start(api_runs, vm_id, headers, script([], hang=True))
    paused = await api_runs.client.post(f"/api/vms/{vm_id}/pause", headers=headers)
    assert paused.status_code == 200, paused.text
    gone = await api_runs.client.delete(f"/api/vms/{vm_id}", headers=headers)
    assert gone.status_code in (200, 204), gone.text
    async with asyncio.timeout(10):
        await api_runs.ctl.runs.wait_idle()
    ended = await api_runs.ctl.runs.get(vm_id, run["id"], None)
    assert ended.status.value == "failed"
    assert "the VM ended" in (ended.error_message or "")
