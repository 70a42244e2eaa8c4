"""VM lifetimes in process, on SQLite and PostgreSQL: ``timeoutS`` and ``idleTimeoutS`` with their
actions, ``PATCH /api/vms/{id}``, ``autoResume``, the events each automatic action tells, and
bad input. Commands run in real agents (``AgentBackend``) where being busy is the point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hearth.auth.states import AuthStatus
from hearth.config import MAX_TIMEOUT_S, Settings
from hearth.control.lifetimes import PRUNE_COMMANDS_AT, running_fields, used_s
from hearth.store import AuthSessionRecord, VmRecord
from hearth.store.records import utc_now
from hearth.vm.types import Vm, VmState, VmType
from hearth_agent.wire import Provider
from tests.agent_backend import AgentBackend
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher

CHECK_S = 0.05  # the lifetime check's interval here


@pytest.fixture
def lifetime_settings(api_settings: Settings) -> Settings:
    """Settings whose lifetime check comes round every ``CHECK_S``."""
    return api_settings.with_overrides(lifetime_check_interval_s=CHECK_S)


@pytest.fixture
async def api_lt(lifetime_settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    """The controller over the fake backend."""
    async with running_api(lifetime_settings, FakeBackend(), tmp_path / "image") as api:
        yield api


@pytest.fixture
async def api_lt_agents(
    lifetime_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller over VMs with real agents."""
    backend = AgentBackend(agent_launcher)
    async with running_api(lifetime_settings, backend, tmp_path / "image") as api:
        yield api


async def new_vm(api: Api, **body: Any) -> dict[str, Any]:
    """A ready VM of user ann's, made with ``body``."""
    created = await api.client.post(
        "/api/vms", json={"userId": "ann", **body}, headers=api.headers()
    )
    assert created.status_code == 201, created.text
    shown: dict[str, Any] = created.json()
    return shown


async def status_of(api: Api, vm_id: str) -> str:
    """The VM's status, read from the store (an API call would count as use)."""
    return (await api.ctl.store.vms.get(vm_id)).status.value


async def until(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` is true."""
    for _ in range(int(timeout_s / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail("the condition never held")


async def events_of(api: Api, kind: str) -> list[dict[str, Any]]:
    """The data of every ``kind`` event so far."""
    return [json.loads(event.data) for event in await api.ctl.events.list() if event.type == kind]


async def told_once(api: Api, kind: str) -> dict[str, Any]:
    """The data of the one ``kind`` event, once it is told (it follows the action's end)."""

    async def told() -> bool:
        return bool(await events_of(api, kind))

    await until(told)
    [data] = await events_of(api, kind)
    return data


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"timeoutS": 0},
        {"timeoutS": MAX_TIMEOUT_S + 1},
        {"idleTimeoutS": -5},
        {"timeoutS": "60"},
        {"timeoutS": 1.5},
        {"timeoutAction": "hibernate-later"},
        {"idleAction": "stop"},
        {"autoResume": "yes"},
    ],
)
async def test_a_lifetime_out_of_bounds_is_422_on_create_and_patch(
    api_lt: Api, body: dict[str, Any]
) -> None:
    refused = await api_lt.client.post(
        "/api/vms", json={"userId": "ann", **body}, headers=api_lt.headers()
    )
    assert_error(refused, 422, "invalid_input")
    assert await api_lt.ctl.store.vms.list() == [], "a refused create left a row"
    vm = await new_vm(api_lt)
    patched = await api_lt.client.patch(f"/api/vms/{vm['id']}", json=body, headers=api_lt.headers())
    assert_error(patched, 422, "invalid_input")
    unchanged = await api_lt.client.get(f"/api/vms/{vm['id']}", headers=api_lt.headers())
    assert {k: unchanged.json()[k] for k in ("timeoutS", "idleTimeoutS")} == {
        "timeoutS": None,
        "idleTimeoutS": None,
    }


async def test_a_browser_vm_takes_no_lifetime_and_is_not_patched(api_lt: Api) -> None:
    refused = await api_lt.client.post(
        "/api/vms",
        json={"userId": "ann", "vmType": "browser", "idleTimeoutS": 60},
        headers=api_lt.headers(),
    )
    assert "CLI VMs" in assert_error(refused, 422, "invalid_input")["message"]
    browser = await new_vm(api_lt, vmType="browser")
    patched = await api_lt.client.patch(
        f"/api/vms/{browser['id']}", json={"timeoutS": 60}, headers=api_lt.headers()
    )
    assert "CLI VMs" in assert_error(patched, 409, "conflict")["message"]


async def test_patch_of_an_ended_or_unknown_or_other_users_vm(api_lt: Api) -> None:
    vm = await new_vm(api_lt)
    ben = api_lt.headers(await api_lt.user_key("ben"))
    other = await api_lt.client.patch(f"/api/vms/{vm['id']}", json={"timeoutS": 60}, headers=ben)
    assert_error(other, 404, "not_found")
    unknown = await api_lt.client.patch(
        "/api/vms/vm-nope", json={"timeoutS": 60}, headers=api_lt.headers()
    )
    assert_error(unknown, 404, "not_found")
    await api_lt.client.delete(f"/api/vms/{vm['id']}", headers=api_lt.headers())
    ended = await api_lt.client.patch(
        f"/api/vms/{vm['id']}", json={"timeoutS": 60}, headers=api_lt.headers()
    )
    assert "destroyed" in assert_error(ended, 409, "conflict")["message"]


# ---- the fields ------------------------------------------------------------------------------


async def test_defaults_come_from_the_settings_and_patch_sets_only_what_it_gives(
    lifetime_settings: Settings, tmp_path: Path
) -> None:
    settings = lifetime_settings.with_overrides(
        vm_timeout_s=7200, vm_idle_timeout_s=900, vm_idle_action="destroy"
    )
    async with running_api(settings, FakeBackend(), tmp_path / "image") as api:
        vm = await new_vm(api)
        assert (vm["timeoutS"], vm["timeoutAction"]) == (7200, "destroy")
        assert (vm["idleTimeoutS"], vm["idleAction"], vm["autoResume"]) == (900, "destroy", True)
        own = await new_vm(api, timeoutS=60, idleTimeoutS=None, timeoutAction="pause")
        assert (own["timeoutS"], own["timeoutAction"], own["idleTimeoutS"]) == (60, "pause", None)
        url = f"/api/vms/{vm['id']}"
        patched = await api.client.patch(
            url, json={"idleTimeoutS": 30, "autoResume": False}, headers=api.headers()
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert (body["timeoutS"], body["idleTimeoutS"], body["autoResume"]) == (7200, 30, False)
        cleared = await api.client.patch(url, json={"timeoutS": None}, headers=api.headers())
        assert cleared.json()["timeoutS"] is None
        assert cleared.json()["idleTimeoutS"] == 30


def test_paused_time_does_not_use_up_the_lifetime() -> None:
    start = utc_now()
    record = VmRecord(
        id="vm-1", user_id="ann", vm_type=VmType.CLI, backend="fake", vcpus=1, mem_mib=512
    )
    record = _moved(record, VmState.READY, start)
    record = _moved(record, VmState.PAUSED, start + timedelta(seconds=10))
    assert used_s(record, start + timedelta(hours=5)) == pytest.approx(10)
    record = _moved(record, VmState.READY, start + timedelta(hours=5))
    assert used_s(record, start + timedelta(hours=5, seconds=3)) == pytest.approx(13)
    unhealthy = _moved(record, VmState.UNHEALTHY, start + timedelta(hours=6))
    assert unhealthy.running_since == record.running_since, "unhealthy is still running"


def _moved(record: VmRecord, new: VmState, now: datetime) -> VmRecord:
    fields = running_fields(record, new, now)
    return dataclasses.replace(
        record,
        status=new,
        lifetime_used_s=float(fields.get("lifetime_used_s", record.lifetime_used_s)),  # type: ignore[arg-type]
        running_since=fields.get("running_since", record.running_since),  # type: ignore[arg-type]
    )


# ---- automatic actions -------------------------------------------------------------------------


async def test_a_lifetime_that_runs_out_destroys_the_vm_through_the_destroy_hooks(
    api_lt: Api,
) -> None:
    seen: list[str] = []

    async def hook(record: VmRecord, token: str | None) -> None:
        seen.append(record.id)  # where the pull-back of delivered credentials runs

    api_lt.ctl.vms.before_destroy = (*api_lt.ctl.vms.before_destroy, hook)
    vm = await new_vm(api_lt, timeoutS=1)
    await until(lambda: _is(api_lt, vm["id"], "destroyed"))
    assert seen == [vm["id"]]
    told = await told_once(api_lt, "vm.timed_out")
    assert (told["reason"], told["action"], told["limitS"]) == ("lifetime", "destroy", 1)


async def test_a_paused_vm_keeps_its_lifetime_and_uses_it_once_resumed(api_lt: Api) -> None:
    # 2 s: room for the pause to land first on a loaded machine.
    vm = await new_vm(api_lt, timeoutS=2, timeoutAction="destroy")
    url = f"/api/vms/{vm['id']}"
    assert (await api_lt.client.post(f"{url}/pause", headers=api_lt.headers())).status_code == 200
    await asyncio.sleep(2.5)
    assert await status_of(api_lt, vm["id"]) == "paused"
    shown = (await api_lt.client.get(url, headers=api_lt.headers())).json()
    assert shown["lifetimeUsedS"] < 2
    assert (await api_lt.client.post(f"{url}/resume", headers=api_lt.headers())).status_code == 200
    await until(lambda: _is(api_lt, vm["id"], "destroyed"))


async def test_an_idle_vm_is_paused_and_auto_resumed_by_the_next_command(
    api_lt_agents: Api,
) -> None:
    api = api_lt_agents
    vm = await new_vm(api, idleTimeoutS=1)
    await until(lambda: _is(api, vm["id"], "paused"))
    told = await told_once(api, "vm.timed_out")
    assert (told["reason"], told["action"]) == ("idle", "pause")
    ran = await api.client.post(
        f"/api/vms/{vm['id']}/exec?wait=false", json={"cmd": ["true"]}, headers=api.headers()
    )
    assert ran.status_code == 202, ran.text
    assert await status_of(api, vm["id"]) == "ready"
    assert (await told_once(api, "vm.auto_resumed")) is not None


class SlowVolumes(FakeBackend):
    """A backend whose volumes take a while to make (a first workspace under load)."""

    async def create_volume(self, path: Path, size_mib: int, key: bytes) -> None:
        await asyncio.sleep(1.5)
        await super().create_volume(path, size_mib, key)


async def test_the_idle_time_starts_when_the_vm_is_handed_over_not_when_its_vmm_was_ready(
    lifetime_settings: Settings, tmp_path: Path
) -> None:
    """A CI failure: a VM whose workspace took longer than its idle timeout was paused the
    moment it became ready, under the user's first command."""
    async with running_api(lifetime_settings, SlowVolumes(), tmp_path / "image") as api:
        # Idle for 2 s from the hand-over: 0.5 s after the answer it is still running (a
        # clock started at the VMM's ready would have paused it during the workspace's 1.5 s).
        vm = await new_vm(api, idleTimeoutS=2)
        await asyncio.sleep(10 * CHECK_S)
        assert await status_of(api, vm["id"]) == "ready"
        await until(lambda: _is(api, vm["id"], "paused"))


class SlowPause(FakeBackend):
    """A backend whose pause takes a moment, and says when one begins and when a VM resumes."""

    def __init__(self) -> None:
        super().__init__()
        self.pausing = asyncio.Event()
        self.resumed = asyncio.Event()

    async def pause(self, vm: Vm) -> None:
        self.pausing.set()
        await asyncio.sleep(0.3)
        await super().pause(vm)

    async def resume(self, vm: Vm) -> None:
        await super().resume(vm)
        self.resumed.set()


async def test_a_vm_used_while_its_idle_pause_is_under_way_runs_on(
    lifetime_settings: Settings, tmp_path: Path
) -> None:
    """The other half of that failure: a command that saw the VM running just before the idle
    pause landed must not find it paused (its request would hang)."""
    backend = SlowPause()
    async with running_api(lifetime_settings, backend, tmp_path / "image") as api:
        vm = await new_vm(api, idleTimeoutS=1)
        await asyncio.wait_for(backend.pausing.wait(), 10)
        used = await api.client.get(f"/api/vms/{vm['id']}", headers=api.headers())
        assert used.json()["status"] == "ready"
        await asyncio.wait_for(backend.resumed.wait(), 10)  # the pause ended, and was undone
        await until(lambda: _is(api, vm["id"], "ready"))
        assert backend.running[vm["id"]].state is VmState.READY
        assert await events_of(api, "vm.timed_out") == []


async def test_api_calls_and_a_running_command_keep_a_vm_from_idling(api_lt_agents: Api) -> None:
    api = api_lt_agents
    vm = await new_vm(api, idleTimeoutS=1)
    url = f"/api/vms/{vm['id']}"
    for _ in range(8):  # 2 s of calls, a quarter second apart
        assert (await api.client.get(url, headers=api.headers())).status_code == 200
        await asyncio.sleep(0.25)
    assert await status_of(api, vm["id"]) == "ready"
    ran = await api.client.post(
        f"{url}/exec?wait=false", json={"cmd": ["sleep", "2.5"]}, headers=api.headers()
    )
    assert ran.status_code == 202, ran.text
    await asyncio.sleep(2)  # nobody calls; the command runs
    assert await status_of(api, vm["id"]) == "ready"
    await until(lambda: _is(api, vm["id"], "paused"))


async def test_a_file_transfer_longer_than_the_idle_timeout_keeps_the_vm_running(
    api_lt_agents: Api,
) -> None:
    # Only a transfer's start and end counted as use: an upload (or a download: the same
    # count) longer than the idle timeout saw its VM paused half-way.
    api = api_lt_agents
    vm = await new_vm(api, idleTimeoutS=1)
    url = f"/api/vms/{vm['id']}/files"

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(10):  # 3 s
            yield b"x" * 1024
            await asyncio.sleep(0.3)

    put = await api.client.put(url, params={"path": "f"}, content=slowly(), headers=api.headers())
    assert put.status_code == 200, put.text
    assert put.json()["size"] == 10 * 1024
    assert await status_of(api, vm["id"]) == "ready"


async def test_a_vm_running_command_after_command_keeps_only_those_still_running(
    api_lt_agents: Api,
) -> None:
    # Without an idle timeout nothing asked which had ended: every command's id was kept for
    # as long as the VM ran. Past PRUNE_COMMANDS_AT the ended ones are forgotten.
    api = api_lt_agents
    vm = await new_vm(api)
    url = f"/api/vms/{vm['id']}/exec"
    long = await api.client.post(
        f"{url}?wait=false", json={"cmd": ["sleep", "60"]}, headers=api.headers()
    )
    assert long.status_code == 202, long.text
    for _ in range(PRUNE_COMMANDS_AT + 6):
        ran = await api.client.post(url, json={"cmd": ["true"]}, headers=api.headers())
        assert ran.status_code == 200, ran.text

    async def ended_ones_forgotten() -> bool:
        kept = api.ctl.lifetimes._execs.get(vm["id"], set())
        return len(kept) <= PRUNE_COMMANDS_AT

    await until(ended_ones_forgotten)
    assert long.json()["execId"] in api.ctl.lifetimes._execs[vm["id"]]


async def test_without_auto_resume_a_paused_vm_refuses_commands(api_lt_agents: Api) -> None:
    api = api_lt_agents
    vm = await new_vm(api, idleTimeoutS=1, autoResume=False)
    await until(lambda: _is(api, vm["id"], "paused"))
    refused = await api.client.post(
        f"/api/vms/{vm['id']}/exec", json={"cmd": ["true"]}, headers=api.headers()
    )
    assert "paused" in assert_error(refused, 409, "conflict")["message"]
    assert await events_of(api, "vm.auto_resumed") == []


async def test_the_lifetime_used_survives_a_controller_restart(
    lifetime_settings: Settings, tmp_path: Path
) -> None:
    backend = FakeBackend()
    async with running_api(lifetime_settings, backend, tmp_path / "image") as first:
        vm = await new_vm(first, timeoutS=3600)
        await first.client.post(f"/api/vms/{vm['id']}/pause", headers=first.headers())
        banked = (await first.ctl.store.vms.get(vm["id"])).lifetime_used_s
    async with running_api(lifetime_settings, backend, tmp_path / "image") as second:
        shown = (await second.client.get(f"/api/vms/{vm['id']}", headers=second.headers())).json()
        assert shown["status"] == "paused"
        assert shown["lifetimeUsedS"] == pytest.approx(banked, abs=0.01)
        assert banked > 0


async def _is(api: Api, vm_id: str, status: str) -> bool:
    return await status_of(api, vm_id) == status


async def test_a_login_under_way_for_the_vm_keeps_it_from_idling(api_lt: Api) -> None:
    vm = await new_vm(api_lt, idleTimeoutS=2)  # room for the login's row on a loaded machine
    login = await api_lt.ctl.store.auth_sessions.insert(
        AuthSessionRecord(
            id="auth-idle-test",
            user_id="ann",
            provider=Provider.CLAUDE_CODE,
            status=AuthStatus.AWAITING_USER,
            vm_id=vm["id"],
        )
    )
    await asyncio.sleep(3)  # the user signs in meanwhile; nobody calls
    assert await status_of(api_lt, vm["id"]) == "ready"
    await api_lt.ctl.store.auth_sessions.transition(
        login.id, AuthStatus.AWAITING_USER, AuthStatus.FAILED, error_message="test over"
    )
    await until(lambda: _is(api_lt, vm["id"], "paused"))


async def test_a_paused_vm_runs_again_for_what_must_happen_before_it_is_destroyed(
    api_lt: Api,
) -> None:
    # The credential pull-back and the workspace's unmount talk to the VM's agent, which a
    # paused VM cannot answer: destroying one lets it run again for them, its row already
    # "stopping" so nothing else takes it meanwhile.
    api = api_lt
    vm_id = str((await new_vm(api))["id"])
    paused = await api.client.post(f"/api/vms/{vm_id}/pause", headers=api.headers())
    assert paused.json()["status"] == "paused"
    token = api.ctl.vms.agent_token(vm_id)
    seen: list[tuple[str, str, str, str | None]] = []

    async def observe(record: VmRecord, agent_token: str | None) -> None:
        now = await api.ctl.store.vms.get(record.id)
        vm = api.backend.running[record.id]
        seen.append((record.status.value, now.status.value, vm.state.value, agent_token))

    api.ctl.vms.before_destroy = (*api.ctl.vms.before_destroy, observe)
    destroyed = await api.client.delete(f"/api/vms/{vm_id}", headers=api.headers())
    assert destroyed.status_code == 200, destroyed.text
    assert seen == [("paused", "stopping", "ready", token)]
    assert await status_of(api, vm_id) == "destroyed"


async def test_a_command_running_when_its_vm_was_hibernated_keeps_it_from_idling_after_its_wake(
    api_lt_agents: Api,
) -> None:
    # The command's processes are in the saved memory and run on once the VM wakes (here the
    # stand-in agent simply runs on): the controller must not forget it meanwhile.
    api = api_lt_agents
    vm = await new_vm(api, idleTimeoutS=1)
    url = f"/api/vms/{vm['id']}"
    ran = await api.client.post(
        f"{url}/exec?wait=false", json={"cmd": ["sleep", "4"]}, headers=api.headers()
    )
    assert ran.status_code == 202, ran.text
    saved = await api.client.post(f"{url}/hibernate", headers=api.headers())
    assert saved.json()["status"] == "hibernated", saved.text
    await asyncio.sleep(10 * CHECK_S)  # the lifetime check comes round while it sleeps
    woken = await api.client.post(f"{url}/resume", headers=api.headers())
    assert woken.json()["status"] == "ready", woken.text
    await asyncio.sleep(2)  # nobody calls; the command runs
    assert await status_of(api, vm["id"]) == "ready"
    await until(lambda: _is(api, vm["id"], "paused"))  # idle once it ended


class SlowWake(AgentBackend):
    """VMs with real agents whose wake takes a moment."""

    async def wake(self, vm: Vm, state_key: bytes) -> Vm:
        await asyncio.sleep(0.5)
        return await super().wake(vm, state_key)


async def test_calls_that_find_a_vm_hibernated_at_once_share_its_wake(
    lifetime_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    backend = SlowWake(agent_launcher)
    async with running_api(lifetime_settings, backend, tmp_path / "image") as api:
        vm = await new_vm(api)
        url = f"/api/vms/{vm['id']}"
        saved = await api.client.post(f"{url}/hibernate", headers=api.headers())
        assert saved.json()["status"] == "hibernated", saved.text
        ran = await asyncio.gather(
            *(
                api.client.post(
                    f"{url}/exec?wait=false", json={"cmd": ["true"]}, headers=api.headers()
                )
                for _ in range(3)
            )
        )
        assert [r.status_code for r in ran] == [202, 202, 202], [r.text for r in ran]
        assert len(await events_of(api, "vm.auto_resumed")) == 1
        assert await status_of(api, vm["id"]) == "ready"


@pytest.mark.parametrize("action", ["hibernate", "destroy"])
async def test_a_vm_used_while_its_idleness_is_checked_is_not_ended(
    api_lt: Api, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    # The check looks at the VM's logins and commands (store and agent round trips) before it
    # acts; a call arriving meanwhile makes it not idle: it is neither hibernated nor destroyed.
    api = api_lt
    lifetimes = api.ctl.lifetimes
    used: list[str] = []

    async def busy_while_a_call_lands(record: VmRecord) -> bool:
        lifetimes.touch(record.id)
        used.append(record.id)
        return False

    monkeypatch.setattr(lifetimes, "_busy", busy_while_a_call_lands)
    vm = await new_vm(api, idleTimeoutS=1, idleAction=action)
    await until(lambda: _has(used, vm["id"]))
    await asyncio.sleep(10 * CHECK_S)
    assert await status_of(api, vm["id"]) == "ready"
    assert await events_of(api, "vm.timed_out") == []


async def _has(seen: list[str], vm_id: str) -> bool:
    return vm_id in seen
