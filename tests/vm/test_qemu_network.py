"""Network isolation for real: a VM reaches neither another VM's agent nor the controller.

Both modes are shown: QEMU user-net (restrict=on, only the agent port forwarded to 127.0.0.1)
and a network namespace per VM (tap inside it, link-local slot, nftables policy). Every probe
runs inside the guest through the agent's ``POST /probe/tcp``; a probe that does connect (to the
VM's own agent) proves the probe itself works.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hearth.errors import VmError
from hearth.images.manifest import ImageDir
from hearth.network.namespace import (
    create_namespace,
    delete_namespace,
    list_namespaces,
    names_for,
)
from hearth.network.pool import SlotPool
from hearth.vm.types import GuestForward, NetworkMode, Vm, VmSpec
from tests.conftest import require_tools
from tests.vm.conftest import TrackingBackend

pytestmark = [pytest.mark.slow, pytest.mark.vm]


async def probe(vm: Vm, host: str, port: int) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{vm.agent_url}/probe/tcp",
            json={"host": host, "port": port, "timeout_ms": 1500},
            headers={"Authorization": f"Bearer {vm.token}"},
            timeout=10,
        )
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


@pytest.fixture
def controller_port() -> Iterator[int]:
    """A listening socket standing for the controller's API, on every host address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("0.0.0.0", 0))
        server.listen(16)
        yield int(server.getsockname()[1])


async def test_user_net_vm_reaches_neither_other_vm_nor_the_host(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, controller_port: int
) -> None:
    a, b = await asyncio.gather(
        qemu_backend.create(minimal_image, VmSpec()),
        qemu_backend.create(minimal_image, VmSpec()),
    )
    assert b.agent_url is not None
    b_port = int(b.agent_url.rsplit(":", 1)[1])
    itself = await probe(a, "127.0.0.1", 8080)
    assert itself["connected"] is True
    # 10.0.2.2 is the host as seen from QEMU user-net; restrict=on must block it.
    for port in (b_port, controller_port):
        result = await probe(a, "10.0.2.2", port)
        assert result["connected"] is False, f"VM reached host port {port}"


async def test_netns_vms_are_healthy_and_isolated(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, controller_port: int
) -> None:
    require_tools("ip", "nft")
    spec = VmSpec(network=NetworkMode.NETNS)
    a = await qemu_backend.create(minimal_image, spec)
    b = await qemu_backend.create(minimal_image, spec)
    assert a.agent_url is not None
    assert b.agent_url is not None
    assert a.agent_url.startswith("http://169.254.")
    assert a.agent_url != b.agent_url
    print(f"netns restore to healthy: {b.time_to_healthy_s:.2f} s")
    itself = await probe(a, "127.0.0.1", 8080)
    assert itself["connected"] is True
    b_ip = b.agent_url.split("//")[1].split(":")[0]
    a_slot = qemu_backend.networks.pool.claims()
    assert len(a_slot) == 2
    host_side = {qemu_backend.networks.pool.addresses(i).host_ip for i in a_slot}
    for host, port in [(b_ip, 8080), *((h, controller_port) for h in host_side)]:
        result = await probe(a, host, port)
        assert result["connected"] is False, f"VM in netns reached {host}:{port}"
    assert names_for(a.id)[0] != names_for(b.id)[0]


async def test_a_netns_vm_reaches_exactly_its_forwarded_endpoint_and_leaves_nothing(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, controller_port: int
) -> None:
    require_tools("ip", "nft")
    allowed = GuestForward(guest_ip="10.0.2.100", guest_port=443, host_port=controller_port)
    vm = await qemu_backend.create(
        minimal_image, VmSpec(network=NetworkMode.NETNS, guest_forwards=(allowed,))
    )
    # The allowed endpoint reaches the node's loopback port...
    assert (await probe(vm, "10.0.2.100", 443))["connected"] is True
    # ...and nothing else does: not another port there, not the namespace's own side.
    assert (await probe(vm, "10.0.2.100", 444))["connected"] is False
    assert (await probe(vm, "10.0.2.2", controller_port))["connected"] is False
    [index] = [i for i, owner in qemu_backend.networks.pool.claims().items() if owner == vm.id]
    host_ip = qemu_backend.networks.pool.addresses(index).host_ip
    assert (await probe(vm, host_ip, controller_port))["connected"] is False
    netns = names_for(vm.id)[0]
    table = f"hearth_{netns.removeprefix('hearth-')}"
    assert table in run_text(["nft", "list", "tables"])
    await qemu_backend.destroy(vm)
    assert table not in run_text(["nft", "list", "tables"])
    assert netns not in run_text(["ip", "netns", "list"])


def run_text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


async def test_forwards_reach_exactly_the_allowed_endpoint_and_expose_extra_ports(
    minimal_image: ImageDir, qemu_backend: TrackingBackend, controller_port: int
) -> None:
    allowed = GuestForward(guest_ip="10.0.2.100", guest_port=443, host_port=controller_port)
    vm = await qemu_backend.create(
        minimal_image, VmSpec(forward_ports=(8080,), guest_forwards=(allowed,))
    )
    # The allowed endpoint is reachable at its guest-visible address...
    assert (await probe(vm, "10.0.2.100", 443))["connected"] is True
    # ...but the same host port is not, directly, and neither is anything else.
    assert (await probe(vm, "10.0.2.2", controller_port))["connected"] is False
    assert (await probe(vm, "10.0.2.100", 444))["connected"] is False
    # An extra guest port is forwarded to its own loopback port.
    assert set(vm.ports) == {8080}
    async with httpx.AsyncClient() as client:
        health = await client.get(f"http://127.0.0.1:{vm.ports[8080]}/health")
    assert health.status_code == 200


def test_a_namespace_name_another_vm_holds_is_refused_and_left_alone(tmp_path: Path) -> None:
    # Names keep 36 bits of a VM's id: two ids can share one. The second VM's network fails;
    # the first keeps its namespace (its cleanup must not take the other's down).
    require_tools("ip", "nft")
    first = "vm-5eed1e55-0000-4000-8000-000000000001"
    second = "vm-5eed1e55-0000-4000-8000-000000000002"
    assert names_for(first) == names_for(second)
    pool = SlotPool(cidr="169.254.0.0/16", claims_dir=tmp_path / "slots")
    network = create_namespace(first, pool.addresses(4000))
    try:
        with pytest.raises(VmError, match="netns add"):
            create_namespace(second, pool.addresses(4001))
        assert network.netns in list_namespaces()
        link = subprocess.run(["ip", "link", "show", network.host_veth], capture_output=True)
        assert link.returncode == 0, "the first VM's veth was taken down"
    finally:
        delete_namespace(network)
    assert network.netns not in list_namespaces()
