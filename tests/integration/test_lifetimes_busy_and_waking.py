"""VM lifetimes where the VM is in between, in process on SQLite and PostgreSQL: an agent that
does not answer whether a command still runs (once, or never again), a call that meets an idle
hibernation or a wake under way, and an unhealthy VM whose action needs it ready.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from hearth.agent_client import AgentClient
from hearth.config import Settings
from hearth.vm.types import Vm, VmState
from tests.agent_backend import AgentBackend
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.test_api_lifetimes import (
    CHECK_S,
    SlowWake,
    events_of,
    new_vm,
    status_of,
    told_once,
    until,
)


@pytest.fixture
def lifetime_settings(api_settings: Settings) -> Settings:
    """Settings whose lifetime check comes round every ``CHECK_S``."""
    return api_settings.with_overrides(lifetime_check_interval_s=CHECK_S)


async def _is(api: Api, vm_id: str, status: str) -> bool:
    return await status_of(api, vm_id) == status


async def start_sleep(api: Api, vm_id: str, seconds: int) -> str:
    """Start ``sleep seconds`` in the VM, not waiting for it; its exec id."""
    ran = await api.client.post(
        f"/api/vms/{vm_id}/exec?wait=false",
        json={"cmd": ["sleep", str(seconds)]},
        headers=api.headers(),
    )
    assert ran.status_code == 202, ran.text
    return str(ran.json()["execId"])


async def test_one_status_ask_the_agent_did_not_answer_keeps_the_command_and_the_vm(
    lifetime_settings: Settings,
    agent_launcher: AgentLauncher,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One ask that timed out (an agent slow under TCG) counted as "not running": the command's
    # id was dropped for good and the idle VM destroyed under it.
    asked: list[str] = []
    real = AgentClient.exec_status

    async def first_ask_unanswered(self: AgentClient, exec_id: str) -> dict[str, Any]:
        asked.append(exec_id)
        if len(asked) == 1:
            raise self.error(f"{self.name} did not answer GET /exec/{exec_id} within 10 s")
        return await real(self, exec_id)

    monkeypatch.setattr(AgentClient, "exec_status", first_ask_unanswered)
    async with running_api(
        lifetime_settings, AgentBackend(agent_launcher), tmp_path / "image"
    ) as api:
        vm = await new_vm(api, idleTimeoutS=1, idleAction="destroy")
        exec_id = await start_sleep(api, vm["id"], 30)

        async def asked_again() -> bool:
            return len(asked) >= 4

        await until(asked_again)
        assert await status_of(api, vm["id"]) == "ready"
        assert api.ctl.lifetimes._execs[vm["id"]] == {exec_id}
        assert await events_of(api, "vm.timed_out") == []


async def test_a_vm_whose_agent_never_answers_again_is_failed_by_its_heartbeats(
    lifetime_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # An agent that does not answer keeps its commands counted as running; one that is gone
    # for good must not keep the VM forever: the heartbeats fail it.
    settings = lifetime_settings.with_overrides(
        heartbeat_interval_s=0.1,
        heartbeat_timeout_s=0.5,
        heartbeat_misses=2,
        unhealthy_deadline_s=2.0,
    )
    backend = AgentBackend(agent_launcher)
    async with running_api(settings, backend, tmp_path / "image") as api:
        vm = await new_vm(api, idleTimeoutS=1, idleAction="destroy")
        await start_sleep(api, vm["id"], 30)
        backend.agent(vm["id"]).kill()  # the guest's agent dies; its VMM runs on
        await until(lambda: _is(api, vm["id"], "failed"))
        failed = await api.ctl.store.vms.get(vm["id"])
        assert "HEARTH_UNHEALTHY_DEADLINE_S" in (failed.error or "")
        assert await events_of(api, "vm.timed_out") == []
        await api.ctl.lifetimes.check_once()
        assert vm["id"] not in api.ctl.lifetimes._execs  # forgotten with the VM


class SlowSave(AgentBackend):
    """VMs with real agents whose hibernation takes a moment, and says when it begins."""

    def __init__(self, launcher: AgentLauncher) -> None:
        super().__init__(launcher)
        self.saving = asyncio.Event()

    async def hibernate(self, vm: Vm, state_key: bytes) -> None:
        self.saving.set()
        await asyncio.sleep(0.5)  # the guest's memory streams out
        await super().hibernate(vm, state_key)


async def test_a_command_during_an_idle_hibernation_wakes_the_vm_once_it_is_saved(
    lifetime_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # With autoResume, a call made while the idle hibernation saved the VM was 409 "is
    # hibernating"; it waits for the save, then wakes the VM as it would a hibernated one.
    backend = SlowSave(agent_launcher)
    async with running_api(lifetime_settings, backend, tmp_path / "image") as api:
        vm = await new_vm(api, idleTimeoutS=1, idleAction="hibernate")
        await asyncio.wait_for(backend.saving.wait(), 10)
        ran = await api.client.post(
            f"/api/vms/{vm['id']}/exec", json={"cmd": ["true"]}, headers=api.headers()
        )
        assert ran.status_code == 200, ran.text
        assert (await told_once(api, "vm.timed_out"))["action"] == "hibernate"
        await told_once(api, "vm.auto_resumed")  # woken once, and told
        assert await status_of(api, vm["id"]) == "ready"


async def test_a_command_during_a_wake_under_way_waits_for_it(
    lifetime_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # A call that met the row "booting" of a wake it had not started (a resume by hand) was
    # 409; it waits for the wake and runs, waking nothing itself.
    async with running_api(lifetime_settings, SlowWake(agent_launcher), tmp_path / "image") as api:
        vm = await new_vm(api)
        url = f"/api/vms/{vm['id']}"
        saved = await api.client.post(f"{url}/hibernate", headers=api.headers())
        assert saved.json()["status"] == "hibernated", saved.text
        resume = asyncio.create_task(api.client.post(f"{url}/resume", headers=api.headers()))
        await until(lambda: _is(api, vm["id"], "booting"))
        ran = await api.client.post(f"{url}/exec", json={"cmd": ["true"]}, headers=api.headers())
        assert ran.status_code == 200, ran.text
        assert (await resume).json()["status"] == "ready"
        assert await events_of(api, "vm.auto_resumed") == []


@pytest.mark.parametrize("action", ["pause", "hibernate", "destroy"])
async def test_an_unhealthy_vm_is_only_destroyed_by_its_lifetime(
    lifetime_settings: Settings, tmp_path: Path, action: str
) -> None:
    # Pause needs a ready VM, hibernate a ready or paused one: an unhealthy VM whose action was
    # either was tried, and failed with a warning, every round.
    async with running_api(lifetime_settings, FakeBackend(), tmp_path / "image") as api:
        vm = await new_vm(api, idleTimeoutS=1, idleAction=action)
        vms = api.ctl.store.vms
        await vms.transition(vm["id"], VmState.READY, VmState.UNHEALTHY, error="missed beats")
        if action == "destroy":
            await until(lambda: _is(api, vm["id"], "destroyed"))
            return
        with capture_logs() as logs:
            await asyncio.sleep(1 + 10 * CHECK_S)
        assert [log for log in logs if log["event"] == "vm_timeout_action_failed"] == []
        assert await status_of(api, vm["id"]) == "unhealthy"
        await vms.transition(vm["id"], VmState.UNHEALTHY, VmState.READY, error=None)
        ended = "paused" if action == "pause" else "hibernated"
        await until(lambda: _is(api, vm["id"], ended))
