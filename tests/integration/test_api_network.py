"""CLI VMs' way out, in process over the fake backend: each CLI VM boots with its own egress path
(the forward in its spec, a proxy on loopback), ``GET|PUT /api/vms/{id}/network`` reads and
changes what it may reach live, commands get the proxy in their environment, and the path is
gone with the VM. That the guest has no other way out is shown in a real VM
(``tests/vm/test_cli_network.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.node.egress import EGRESS_GUEST_IP, EGRESS_GUEST_PORT, EGRESS_PROXY_URL
from tests.agent_backend import AgentBackend
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.test_api_exec import exit_of, output, stream

LOOPBACK = "127.0.0.1"


@pytest.fixture
async def api_net(
    api_settings: Settings, agent_launcher: AgentLauncher, echo_port: int, tmp_path: Path
) -> AsyncIterator[Api]:
    """The controller in process, ``stand-in.test:443`` pinned to the echo server."""
    settings = api_settings.with_overrides(
        egress_pins=(("stand-in.test:443", f"{LOOPBACK}:{echo_port}"),)
    )
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


async def connect_through(port: int, target: str) -> int:
    """CONNECT ``target`` through the proxy on ``port``: the status it answers."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head.split(b" ")[1])
    finally:
        writer.close()


async def new_cli_vm(api: Api, user: str) -> tuple[str, dict[str, str]]:
    headers = api.headers(await api.user_key(user))
    created = await api.client.post("/api/vms", json={}, headers=headers)
    assert created.status_code == 201, created.text
    return created.json()["id"], headers


async def test_a_cli_vm_boots_with_its_own_path_that_lets_nothing_through_by_default(
    api_net: Api,
) -> None:
    api = api_net
    vm_id, headers = await new_cli_vm(api, "ann")
    (forward,) = api.backend.running[vm_id].spec.guest_forwards
    assert (forward.guest_ip, forward.guest_port) == (EGRESS_GUEST_IP, EGRESS_GUEST_PORT)
    policy = (await api.client.get(f"/api/vms/{vm_id}/network", headers=headers)).json()
    nothing = {"tunnels": 0, "refused": 0, "bytesUp": 0, "bytesDown": 0}
    assert policy == {
        "providers": [],
        "allowOut": [],
        "denyOut": [],
        "allow": [],
        "traffic": nothing,
    }
    assert await connect_through(forward.host_port, "stand-in.test:443") == 403
    # Commands in the VM get the proxy; one may still set its own.
    events = await stream(api, "POST", f"/api/vms/{vm_id}/exec", headers, json={"cmd": ["env"]})
    env = dict(line.split("=", 1) for line in output(events, "stdout").decode().splitlines())
    assert env["HTTPS_PROXY"] == env["https_proxy"] == EGRESS_PROXY_URL
    assert "127.0.0.1" in env["NO_PROXY"]
    own = await stream(
        api,
        "POST",
        f"/api/vms/{vm_id}/exec",
        headers,
        json={"cmd": ["sh", "-c", "echo $HTTPS_PROXY"], "env": {"HTTPS_PROXY": "http://mine"}},
    )
    assert output(own, "stdout") == b"http://mine\n"
    assert exit_of(own)["code"] == 0


async def test_put_network_changes_what_the_vm_reaches_at_once_and_a_deny_wins(
    api_net: Api,
) -> None:
    api = api_net
    vm_id, headers = await new_cli_vm(api, "ann")
    port = api.backend.running[vm_id].spec.guest_forwards[0].host_port
    url = f"/api/vms/{vm_id}/network"
    opened = await api.client.put(url, json={"allowOut": ["stand-in.test"]}, headers=headers)
    assert opened.status_code == 200, opened.text
    assert opened.json()["allow"] == ["stand-in.test"]
    assert await connect_through(port, "stand-in.test:443") == 200
    assert await connect_through(port, "other.test:443") == 403
    closed = await api.client.put(
        url, json={"allowOut": ["*.test"], "denyOut": ["stand-in.test"]}, headers=headers
    )
    assert closed.json()["denyOut"] == ["stand-in.test"]
    assert await connect_through(port, "stand-in.test:443") == 403
    # What the path carried is counted per VM and in /metrics.
    traffic = (await api.client.get(url, headers=headers)).json()["traffic"]
    assert (traffic["tunnels"], traffic["refused"]) == (1, 2)
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_egress_requests_total{outcome="tunneled"}' in metrics
    assert 'hearth_egress_bytes_total{direction="up"}' in metrics


async def test_network_routes_refuse_bad_entries_other_users_and_vms_without_a_path(
    api_net: Api,
) -> None:
    api = api_net
    vm_id, headers = await new_cli_vm(api, "ann")
    url = f"/api/vms/{vm_id}/network"
    bad = await api.client.put(url, json={"allowOut": ["host:99999"]}, headers=headers)
    assert "host:99999" in assert_error(bad, 422, "invalid_input")["message"]
    assert (await api.client.get(url, headers=headers)).json()["allowOut"] == []
    bob = api.headers(await api.user_key("bob"))
    assert_error(await api.client.get(url, headers=bob), 404, "not_found")
    made = {"userId": "bob", "vmType": "browser"}  # by the admin key: only it may
    browser = await api.client.post("/api/vms", json=made, headers=api.headers())
    browser_url = f"/api/vms/{browser.json()['id']}/network"
    assert_error(await api.client.get(browser_url, headers=bob), 409, "conflict")


async def test_the_path_goes_with_the_vm(api_net: Api) -> None:
    api = api_net
    vm_id, headers = await new_cli_vm(api, "ann")
    port = api.backend.running[vm_id].spec.guest_forwards[0].host_port
    assert (await api.client.get(f"/api/vms/{vm_id}/network", headers=headers)).status_code == 200
    assert (await api.ctl.store.egress.get(vm_id)) is not None
    assert (await api.client.delete(f"/api/vms/{vm_id}", headers=headers)).status_code == 200
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(LOOPBACK, port)
    assert (await api.ctl.store.egress.get(vm_id)) is None


async def test_a_restarted_controller_reopens_each_adopted_vms_path_with_its_policy(
    api_settings: Settings, agent_launcher: AgentLauncher, echo_port: int, tmp_path: Path
) -> None:
    settings = api_settings.with_overrides(
        egress_pins=(("stand-in.test:443", f"{LOOPBACK}:{echo_port}"),)
    )
    backend = AgentBackend(agent_launcher)
    policy = {"allowOut": ["stand-in.test", "*.example.org"], "denyOut": ["bad.example.org"]}
    async with running_api(settings, backend, tmp_path / "image") as first:
        vm_id, headers = await new_cli_vm(first, "ann")
        gone_id, _ = await new_cli_vm(first, "ann")
        port = backend.running[vm_id].spec.guest_forwards[0].host_port
        url = f"/api/vms/{vm_id}/network"
        assert (await first.client.put(url, json=policy, headers=headers)).status_code == 200
        before = (await first.client.get(url, headers=headers)).json()
        assert await connect_through(port, "stand-in.test:443") == 200
    # The controller is gone: the VM's QEMU would dial a port nobody listens on.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(LOOPBACK, port)
    await backend.destroy(backend.running[gone_id])  # died while no controller ran
    async with running_api(settings, backend, tmp_path / "image") as second:
        after = (await second.client.get(url, headers=headers)).json()
        assert {k: v for k, v in after.items() if k != "traffic"} == {
            k: v for k, v in before.items() if k != "traffic"
        }
        assert await connect_through(port, "stand-in.test:443") == 200
        assert await connect_through(port, "bad.example.org:443") == 403
        assert await connect_through(port, "other.test:443") == 403
        events = await stream(
            second, "POST", f"/api/vms/{vm_id}/exec", headers, json={"cmd": ["env"]}
        )
        assert f"HTTPS_PROXY={EGRESS_PROXY_URL}" in output(events, "stdout").decode()
        # The VM that died meanwhile failed, and its stored path is forgotten.
        assert (await second.ctl.store.egress.get(gone_id)) is None
        assert (await second.client.delete(f"/api/vms/{vm_id}", headers=headers)).status_code == 200


async def test_a_vm_whose_proxy_port_another_process_took_is_failed_not_adopted(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> None:
    # Its VMM dials that port for every connection out: adopted, the VM would reach whatever
    # listens there now, with no allowlist.
    backend = AgentBackend(agent_launcher)
    async with running_api(api_settings, backend, tmp_path / "image") as first:
        vm_id, _ = await new_cli_vm(first, "ann")
        port = backend.running[vm_id].spec.guest_forwards[0].host_port
    squatter = await asyncio.start_server(lambda r, w: w.close(), LOOPBACK, port)
    try:
        async with running_api(api_settings, backend, tmp_path / "image") as second:
            record = await second.ctl.store.vms.get(vm_id)
            assert record.status.value == "failed"
            assert f"could not listen on port {port}" in (record.error or "")
            assert vm_id not in second.ctl.vms.live
            assert vm_id not in backend.running
    finally:
        squatter.close()
        await squatter.wait_closed()


async def test_with_cli_egress_off_a_cli_vm_has_no_way_out(
    api_settings: Settings, tmp_path: Path
) -> None:
    settings = api_settings.with_overrides(cli_egress="off")
    async with running_api(settings, FakeBackend(), tmp_path / "image") as api:
        vm_id, headers = await new_cli_vm(api, "ann")
        assert api.backend.running[vm_id].spec.guest_forwards == ()
        refused = await api.client.get(f"/api/vms/{vm_id}/network", headers=headers)
        assert "no egress path" in assert_error(refused, 409, "conflict")["message"]
