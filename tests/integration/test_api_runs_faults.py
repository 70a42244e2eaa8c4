"""Runs when something goes wrong around them, in process on SQLite and PostgreSQL over real
agents on loopback (``run_fixtures``): a controller restart at the worst
moment, a cancel that cannot reach the CLI yet, a pump that fails in the controller, a line no
parser can decode, a timeout past the operator's limit, and an agent update under way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hearth.agent_bundle import AgentBundle
from hearth.control.agent_updates import AgentUpdates
from hearth.errors import Conflict
from hearth.runs.claude import ClaudeStream
from hearth.store.records import RunRecord
from hearth_agent.wire import Provider
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error
from tests.integration.run_fixtures import *  # noqa: F403
from tests.integration.run_fixtures import (
    ANSWER,
    Controller,
    Event,
    events_of,
    logged_in_vm,
    script,
    start,
    text_of,
    vm_status,
)
from tests.integration.run_lines import answer_lines

# Long enough for a run that should end to have ended; a run that should not is still running.
ENDS_WITHIN_S = 20.0


async def ended(api: Api, vm_id: str, run_id: str, headers: dict[str, str]) -> list[Event]:
    """The run's events to its last, which must come within ``ENDS_WITHIN_S``."""
    return await asyncio.wait_for(events_of(api, vm_id, run_id, headers), ENDS_WITHIN_S)


async def stored_kinds(api: Api, run_id: str) -> list[str]:
    return [event.type for event in await api.ctl.store.runs.events(run_id, after=0)]


async def test_a_restart_after_the_clis_result_before_its_exit_still_completes(
    controller: Controller,
) -> None:
    # The CLI's ``result`` line decides completed or failed at its exit; the next controller's
    # pump started a fresh parser that had not seen it: ``cli_crashed`` for a run that answered.
    lines = answer_lines("claude_code") + [""] * 20  # the CLI lingers ~4 s after its result
    async with controller() as first:
        vm_id, headers = await logged_in_vm(first, "max")
        run = await start(first, vm_id, headers, script(lines, pause_s=0.2))
        async with asyncio.timeout(ENDS_WITHIN_S):
            while "usage" not in await stored_kinds(first, run["id"]):
                await asyncio.sleep(0.05)
    async with controller() as second:
        whole = await ended(second, vm_id, run["id"], headers)
        await second.ctl.runs.wait_idle()
    assert whole[-1][1] == "run.completed", whole[-1]
    assert text_of(whole) == ANSWER


async def pause_without_auto_resume(api: Api, vm_id: str, headers: dict[str, str]) -> None:
    patched = await api.client.patch(
        f"/api/vms/{vm_id}", json={"autoResume": False}, headers=headers
    )
    assert patched.is_success, patched.text
    paused = await api.client.post(f"/api/vms/{vm_id}/pause", headers=headers)
    assert paused.status_code == 200, paused.text


async def cancel(api: Api, vm_id: str, run_id: str, headers: dict[str, str]) -> dict[str, Any]:
    answer = await api.client.post(f"/api/vms/{vm_id}/runs/{run_id}/cancel", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_cancel_in_a_paused_vm_without_auto_resume_stops_the_cli_once_it_runs(
    api_runs: Api,
) -> None:
    # The kill went through the route's gate, which refuses a paused VM that may not be
    # resumed: answered 200, nothing was stopped, and the CLI ran on after the resume.
    vm_id, headers = await logged_in_vm(api_runs, "kim")
    run = await start(api_runs, vm_id, headers, script([], hang=True))
    await pause_without_auto_resume(api_runs, vm_id, headers)
    try:
        assert (await cancel(api_runs, vm_id, run["id"], headers))["status"] == "running"
        await asyncio.sleep(1.5)
        assert await vm_status(api_runs, vm_id, headers) == "paused", "the cancel woke the VM"
        resumed = await api_runs.client.post(f"/api/vms/{vm_id}/resume", headers=headers)
        assert resumed.status_code == 200, resumed.text
        events = await ended(api_runs, vm_id, run["id"], headers)
        assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "cancelled")
    finally:
        await cancel(api_runs, vm_id, run["id"], headers)  # the VM runs: this one reaches it


async def test_a_cancel_waiting_for_its_vm_is_carried_out_by_the_next_controller(
    controller: Controller,
) -> None:
    async with controller() as first:
        vm_id, headers = await logged_in_vm(first, "lee")
        run = await start(first, vm_id, headers, script([], hang=True))
        await pause_without_auto_resume(first, vm_id, headers)
        await cancel(first, vm_id, run["id"], headers)
    async with controller() as second:
        try:
            resumed = await second.client.post(f"/api/vms/{vm_id}/resume", headers=headers)
            assert resumed.status_code == 200, resumed.text
            events = await ended(second, vm_id, run["id"], headers)
            assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "cancelled")
        finally:
            await cancel(second, vm_id, run["id"], headers)
            await second.ctl.runs.wait_idle()


class FailingStream(ClaudeStream):
    """A parser with a bug: it fails on the first line it reads."""

    def feed_line(self, line: str) -> list[Any]:
        raise ZeroDivisionError("a bug in the parser")


async def test_a_pump_that_fails_ends_its_run_cli_crashed_and_stops_the_cli(
    api_runs: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pump only logged its failure: the run stayed "running" for good (its readers waiting,
    # agent updates refused as "run in progress"), its CLI running on with nobody reading it.
    monkeypatch.setattr("hearth.control.run_pump.parser_for", lambda provider: FailingStream())
    vm_id, headers = await logged_in_vm(api_runs, "ned")
    run = await start(api_runs, vm_id, headers, script(["hello"], hang=True))
    events = await ended(api_runs, vm_id, run["id"], headers)
    assert (events[-1][1], events[-1][2]["code"]) == ("run.failed", "cli_crashed")
    assert "internal error" in events[-1][2]["message"]
    assert "bug in the parser" not in events[-1][2]["message"]
    stored = await api_runs.ctl.store.runs.get(run["id"])
    assert stored.status.value == "failed"
    url = f"/api/vms/{vm_id}/exec/{stored.exec_id}"
    async with asyncio.timeout(ENDS_WITHIN_S):
        while (await api_runs.client.get(url, headers=headers)).json()["status"] == "running":
            await asyncio.sleep(0.1)


async def test_a_line_nested_too_deep_for_the_decoder_is_raw_and_the_run_reads_on(
    api_runs: Api,
) -> None:
    # json.loads raised RecursionError on it, which crashed the pump (above).
    vm_id, headers = await logged_in_vm(api_runs, "ora")
    lines = ["[" * 30_000, *answer_lines("claude_code")]
    run = await start(api_runs, vm_id, headers, script(lines))
    events = await ended(api_runs, vm_id, run["id"], headers)
    assert [kind for _, kind, _ in events[:2]] == ["run.started", "raw"]
    assert events[-1][1] == "run.completed"
    assert text_of(events) == ANSWER


async def test_a_timeout_past_the_operators_limit_is_422_naming_it_and_starts_nothing(
    api_runs: Api,
) -> None:
    # HEARTH_RUN_TIMEOUT_S is the default and the most; the schema's 6 h were the only bound.
    vm_id, headers = await logged_in_vm(api_runs, "pat")
    most = api_runs.ctl.settings.run_timeout_s
    answer = await api_runs.client.post(
        f"/api/vms/{vm_id}/runs",
        json={"provider": "claude_code", "prompt": "hi", "timeoutS": most + 1},
        headers=headers,
    )
    assert "HEARTH_RUN_TIMEOUT_S" in assert_error(answer, 422, "invalid_input")["message"]
    listed = await api_runs.client.get(f"/api/vms/{vm_id}/runs", headers=headers)
    assert listed.json()["runs"] == []


def holding_updates(api: Api) -> AgentUpdates:
    """The controller's agent updates, holding a VM through its ExecService while updating it."""
    ctl = api.ctl
    return AgentUpdates(
        vms=ctl.vms,
        heartbeat=ctl.heartbeat,
        settings=ctl.settings,
        bundle=AgentBundle.build(),
        execs=ctl.execs,
    )


async def test_a_run_asked_for_while_the_vms_agent_is_updated_is_refused_naming_it(
    api_runs: Api,
) -> None:
    # Past the update's check for runs in progress, nothing stopped a run from starting its
    # CLI under the agent being replaced. (The controller's own AgentUpdates is built here with
    # the ExecService it holds the VM through.)
    vm_id, headers = await logged_in_vm(api_runs, "quy")
    ctl = api_runs.ctl
    updates = holding_updates(api_runs)
    await ctl.store.vms.update(vm_id, agent_version="0.0.1")  # not the bundle's: pushed
    pushing, done = asyncio.Event(), asyncio.Event()
    push = updates._update

    async def held_push(record: Any, started: Any) -> Any:
        pushing.set()
        await done.wait()
        return await push(record, started)

    updates._update = held_push  # type: ignore[method-assign]
    updating = asyncio.create_task(updates.update(vm_id))
    try:
        await asyncio.wait_for(pushing.wait(), ENDS_WITHIN_S)
        refused = await api_runs.client.post(
            f"/api/vms/{vm_id}/runs",
            json={"provider": "claude_code", "prompt": script(answer_lines("claude_code"))},
            headers=headers,
        )
        assert "being updated" in assert_error(refused, 409, "conflict")["message"]
        command = await api_runs.client.post(
            f"/api/vms/{vm_id}/exec?wait=false", json={"cmd": ["true"]}, headers=headers
        )
        assert "being updated" in assert_error(command, 409, "conflict")["message"]
        listed = await api_runs.client.get(f"/api/vms/{vm_id}/runs", headers=headers)
        assert listed.json()["runs"] == []  # the refused run left no row
    finally:
        done.set()
        await updating  # the agent (without --updates) refuses the push: "failed"
    run = await start(api_runs, vm_id, headers, script(answer_lines("claude_code")))
    assert (await ended(api_runs, vm_id, run["id"], headers))[-1][1] == "run.completed"


async def test_a_run_started_past_an_updates_check_is_seen_by_it(api_runs: Api) -> None:
    # The other order: a run whose row is stored before the update looks refuses the update.
    vm_id, headers = await logged_in_vm(api_runs, "rae")
    ctl = api_runs.ctl
    run = await ctl.store.runs.insert(
        RunRecord(user_id="rae", vm_id=vm_id, provider=Provider.CLAUDE_CODE, timeout_s=60)
    )
    updates = holding_updates(api_runs)
    await ctl.store.vms.update(vm_id, agent_version="0.0.1")
    with pytest.raises(Conflict, match=run.id):
        await updates.update(vm_id)
    # Refused, it holds nothing: a run starts.
    started = await start(api_runs, vm_id, headers, script(answer_lines("claude_code")))
    assert (await ended(api_runs, vm_id, started["id"], headers))[-1][1] == "run.completed"
