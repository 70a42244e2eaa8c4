"""``POST /api/vms/{id}/agent/update`` and ``/api/agent/rollout`` in process, over VMs whose
agents are real processes on loopback started without ``--updates`` (so every update that gets
to an agent is refused there): who may update what, what is refused before anything is sent
(a login or run in progress, a VM not ready, another user's VM), a refusal by the agent
reported as ``failed`` with ``agent.update_failed``, and the rollout's bad input. The updates
themselves, swap and rollback, run in real VMs (``tests/vm/test_agent_update.py``) and against
a respawned agent (``tests/integration/test_agent_update.py``).
"""

from __future__ import annotations

from hearth.agent_bundle import AgentBundle
from hearth.runs.states import RunStatus
from hearth.store.records import AuthSessionRecord, RunRecord
from hearth_agent.wire import Provider
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error


def update_url(vm_id: str) -> str:
    return f"/api/vms/{vm_id}/agent/update"


async def test_an_update_is_refused_while_a_login_or_run_is_in_progress_unless_forced(
    agent_api: Api,
) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    run = await api.ctl.store.runs.insert(
        RunRecord(user_id="ann", vm_id=vm_id, provider=Provider.CLAUDE_CODE, timeout_s=60)
    )
    refused = await api.client.post(update_url(vm_id), json={}, headers=api.headers())
    assert run.id in assert_error(refused, 409, "conflict")["message"]
    await api.ctl.store.runs.transition(run.id, run.status, RunStatus.FAILED)
    session = await api.ctl.store.auth_sessions.insert(
        AuthSessionRecord(id="auth-x", user_id="ann", provider=Provider.CODEX, vm_id=vm_id)
    )
    refused = await api.client.post(update_url(vm_id), json={}, headers=api.headers())
    assert session.id in assert_error(refused, 409, "conflict")["message"]
    # Forced, it reaches the agent, which (started without --updates) refuses it.
    forced = await api.client.post(update_url(vm_id), json={"force": True}, headers=api.headers())
    assert forced.status_code == 200, forced.text
    result = forced.json()
    assert result["status"] == "failed"
    assert "refused the update" in result["error"]
    events = (await api.client.get("/api/events", headers=api.headers())).json()["events"]
    (failed,) = [e for e in events if e["type"] == "agent.update_failed"]
    assert failed["vmId"] == vm_id
    assert failed["data"]["toVersion"] == AgentBundle.build().version


async def test_updates_are_the_owners_or_an_admins_and_only_of_ready_vms(agent_api: Api) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    bob = api.headers(await api.user_key("bob"))
    assert_error(await api.client.post(update_url(vm_id), headers=bob), 404, "not_found")
    assert_error(await api.client.post(update_url("vm-nothing"), headers=bob), 404, "not_found")
    await api.client.post(f"/api/vms/{vm_id}/pause", headers=api.headers())
    paused = await api.client.post(update_url(vm_id), headers=api.headers())
    assert "paused" in assert_error(paused, 409, "conflict")["message"]
    bad = await api.client.post(update_url(vm_id), json={"force": "yes"}, headers=api.headers())
    assert_error(bad, 422, "invalid_input")


async def test_rollouts_are_for_admins_with_sane_limits(agent_api: Api) -> None:
    api = agent_api
    ann = api.headers(await api.user_key("ann"))
    assert_error(
        await api.client.get("/api/agent/rollout", headers=api.headers()), 404, "not_found"
    )
    assert_error(await api.client.post("/api/agent/rollout", headers=ann), 403, "forbidden")
    for limit in (0, 101, "1"):
        bad = await api.client.post(
            "/api/agent/rollout", json={"maxUnavailable": limit}, headers=api.headers()
        )
        assert_error(bad, 422, "invalid_input")
