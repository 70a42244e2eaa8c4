"""Errors of a VM's agent as API clients get them, in process over VMs whose agents are real
processes on loopback: an agent's 404, its refusal of an update (the result, the event) and
an agent that does not answer name the VM by its id, never the agent's address inside the VM
network."""

from __future__ import annotations

from tests.agent_backend import AgentBackend
from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error


def address_of(api: Api, vm_id: str) -> str:
    """The VM's agent address as the controller holds it, without the scheme (``host:port``)."""
    url = api.ctl.vms.live_vm(vm_id).agent_url
    assert url is not None
    return url.split("//", 1)[1]


async def test_an_agents_404_names_the_vm_not_its_agent_address(agent_api: Api) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")

    response = await api.client.get(f"/api/vms/{vm_id}/exec/exec-nothing", headers=api.headers())

    message = assert_error(response, 404, "not_found")["message"]
    assert message == f"the agent of VM {vm_id}: no exec with id 'exec-nothing'"
    assert address_of(api, vm_id) not in message


async def test_an_agent_that_does_not_answer_is_named_by_its_vm(agent_api: Api) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    address = address_of(api, vm_id)
    assert isinstance(api.backend, AgentBackend)
    api.backend.agent(vm_id).kill()  # the VM still reads ready

    response = await api.client.get(f"/api/vms/{vm_id}/exec/exec-x", headers=api.headers())

    message = assert_error(response, 502, "agent_error")["message"]
    assert message.startswith(f"the agent of VM {vm_id} did not answer GET /exec/exec-x")
    assert address not in message


async def test_a_refused_agent_update_names_the_vm_in_its_result_and_event(agent_api: Api) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")

    # Forced past nothing; the agent, started without --updates, refuses it.
    forced = await api.client.post(
        f"/api/vms/{vm_id}/agent/update", json={"force": True}, headers=api.headers()
    )

    assert forced.status_code == 200, forced.text
    assert forced.json()["status"] == "failed"
    error = forced.json()["error"]
    assert error.startswith(
        f"the agent refused the update: the agent of VM {vm_id} refused POST /agent/update: "
    )
    assert address_of(api, vm_id) not in error
    events = (await api.client.get("/api/events", headers=api.headers())).json()["events"]
    (failed,) = [e for e in events if e["type"] == "agent.update_failed"]
    assert failed["data"]["error"] == error
