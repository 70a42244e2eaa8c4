"""The egress proxy never dials the node's own addresses, whatever a name resolves to, but a pin.

Over real sockets on loopback only. A test may not put an address on an interface of the host,
so "a public address of the node" is stood for by a loopback alias, 127.0.0.2, with a listener
bound there: the proxy is told (its injected node-address source) that 127.0.0.2 is the node's,
and an ``allow_private`` exception for it takes the place of the public address's passing the
private-address rule. The real source is tested against the kernel's own listing (``ip addr``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from hearth.metrics import ControllerMetrics
from hearth.network.addresses import IPAddress
from hearth.network.egress import EgressProxy
from hearth.network.node_addresses import (
    NodeAddresses,
    interface_addresses,
    is_node_address,
    own_addresses,
)
from tests.unit.test_egress import FakeResolver, ask, connect, open_tunnel, outcomes

NODE_STAND_IN = "127.0.0.2"  # stands for one of the node's non-loopback addresses
GREETING = b"node service\n"  # what the service on it says first
STEP = 5.0


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@dataclass
class NodeAddressSourceFake:
    """An injected node-address source answering a fixed set, counting how often it is asked."""

    addresses: frozenset[IPAddress]
    asked: int = 0

    def __call__(self) -> Collection[IPAddress]:
        self.asked += 1
        return self.addresses


def the_node_is(*addresses: str) -> NodeAddressSourceFake:
    return NodeAddressSourceFake(frozenset(ip(a) for a in addresses))


@dataclass
class Listener:
    """A real server on ``host``: counts the connections it accepted and greets each."""

    host: str
    port: int = 0
    accepted: int = 0

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.write(GREETING)
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()


@contextlib.asynccontextmanager
async def listening_on(host: str) -> AsyncIterator[Listener]:
    state = Listener(host)
    server = await asyncio.start_server(state.greet, host, 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


@pytest.fixture
async def node_service() -> AsyncIterator[Listener]:
    """A service listening on the node's stand-in address (127.0.0.2)."""
    async with listening_on(NODE_STAND_IN) as state:
        yield state


def node_proxy(
    service: Listener,
    allow: Sequence[str],
    *,
    answers: dict[str, list[str]] | None = None,
    node: Collection[str] = (NODE_STAND_IN,),
    **options: Any,
) -> EgressProxy:
    """A proxy (for ``async with``) that allows ``allow``, excepts ``service``'s address from the
    private-address rule (as a public address would pass it), resolves names from ``answers``
    and is told the node's addresses are ``node``."""
    options.setdefault("allow_private", [service.target])
    resolver = FakeResolver(answers or {})
    return EgressProxy(allow, resolver=resolver, node=the_node_is(*node), **options)


async def greeted(proxy: EgressProxy, target: str) -> bytes:
    """CONNECT through ``proxy`` (200 expected) and return the first bytes from the far end."""
    reader, writer = await open_tunnel(proxy, target)
    try:
        return await asyncio.wait_for(reader.readexactly(len(GREETING)), STEP)
    finally:
        writer.close()


# --- the reproduction: an allowed name pointing at the node ----------------------------------


async def test_an_allowed_name_resolving_to_a_node_address_gets_403_and_is_never_dialled(
    node_service: Listener,
) -> None:
    metrics = ControllerMetrics()
    name_port = node_service.port
    name = f"api.allowed.test:{name_port}"
    async with node_proxy(
        node_service,
        [name],
        answers={"api.allowed.test": [NODE_STAND_IN]},
        metrics=metrics,
        owner="vm-1",
    ) as proxy:
        with capture_logs() as logs:
            answer = await ask(proxy, connect(name))
        assert answer.status == 403
        assert answer.body == b"403 Forbidden: destination not allowed\n"
        assert node_service.accepted == 0
        assert outcomes(metrics, "denied_address") == 1
        assert proxy.traffic.refused == 1
        denied = [entry for entry in logs if entry["event"] == "egress_denied"]
        seen = [(e["log_level"], e["owner"], e["host"], e["port"], e["outcome"]) for e in denied]
        assert seen == [("warning", "vm-1", "api.allowed.test", name_port, "denied_address")]


async def test_the_same_name_is_tunnelled_when_the_address_is_not_the_nodes(
    node_service: Listener,
) -> None:
    # The control: only the node-address check stands between the guest and the service (this
    # is what every proxy did before the check existed).
    name = f"api.allowed.test:{node_service.port}"
    async with node_proxy(
        node_service, [name], answers={"api.allowed.test": [NODE_STAND_IN]}, node=["192.0.2.2"]
    ) as proxy:
        assert await greeted(proxy, name) == GREETING
        assert node_service.accepted == 1


@pytest.mark.parametrize(
    "answers",
    [
        [NODE_STAND_IN],
        ["::ffff:127.0.0.2"],  # the IPv4-mapped form of the same address
        ["127.0.0.3", NODE_STAND_IN],  # one bad answer refuses the name, whichever comes first
    ],
    ids=["plain", "ipv4-mapped", "second-answer"],
)
async def test_every_form_and_position_of_a_node_address_in_the_answer_is_refused(
    node_service: Listener, answers: list[str]
) -> None:
    name = f"api.allowed.test:{node_service.port}"
    excepted = [node_service.target, f"127.0.0.3:{node_service.port}"]
    async with node_proxy(
        node_service, [name], answers={"api.allowed.test": answers}, allow_private=excepted
    ) as proxy:
        assert (await ask(proxy, connect(name))).status == 403
        assert node_service.accepted == 0


async def test_an_allowlisted_ip_literal_of_the_node_is_refused(node_service: Listener) -> None:
    async with node_proxy(node_service, [node_service.target]) as proxy:
        assert (await ask(proxy, connect(node_service.target))).status == 403
        assert node_service.accepted == 0


async def test_the_node_addresses_are_read_when_a_connection_is_dialled_not_when_started(
    node_service: Listener,
) -> None:
    node = the_node_is()
    async with EgressProxy(
        [node_service.target], allow_private=[node_service.target], node=node
    ) as proxy:
        node.addresses = frozenset({ip(NODE_STAND_IN)})  # the node gained the address meanwhile
        assert (await ask(proxy, connect(node_service.target))).status == 403
    assert node.asked >= 1
    assert node_service.accepted == 0


async def test_unreadable_node_addresses_refuse_rather_than_dial(node_service: Listener) -> None:
    def unreadable() -> Collection[IPAddress]:
        raise OSError("netlink unavailable")

    metrics = ControllerMetrics()
    target = node_service.target
    async with EgressProxy(
        [target], allow_private=[target], node=unreadable, metrics=metrics
    ) as proxy:
        assert (await ask(proxy, connect(target))).status == 403
    assert outcomes(metrics, "denied_address") == 1
    assert node_service.accepted == 0


async def test_the_unspecified_address_is_refused_even_when_excepted() -> None:
    # Dialling 0.0.0.0 reaches the node itself (Linux connects it to a local listener). The
    # real node-address source, not an injected one.
    async with listening_on("127.0.0.1") as local:
        target = f"0.0.0.0:{local.port}"
        async with EgressProxy([target], allow_private=[target]) as proxy:
            assert (await ask(proxy, connect(target))).status == 403
        assert local.accepted == 0


# --- pins: the one exemption, and a narrow one --------------------------------------------


async def test_a_pin_still_reaches_its_node_address_and_only_that_name_does(
    node_service: Listener,
) -> None:
    port = node_service.port
    async with node_proxy(
        node_service,
        ["auth.vendor.test:443", f"auth.vendor.test:{port}", f"other.vendor.test:{port}"],
        pins={"auth.vendor.test:443": node_service.target},
        answers={"auth.vendor.test": [NODE_STAND_IN], "other.vendor.test": [NODE_STAND_IN]},
    ) as proxy:
        assert await greeted(proxy, "auth.vendor.test:443") == GREETING
        assert node_service.accepted == 1
        # Another allowlisted name resolving there, and the pinned name at a port it is not pinned
        # at, are judged like any other answer: the node's address is refused.
        assert (await ask(proxy, connect(f"other.vendor.test:{port}"))).status == 403
        assert (await ask(proxy, connect(f"auth.vendor.test:{port}"))).status == 403
        assert node_service.accepted == 1


# --- which addresses are the node's -------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "node"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),  # IPv4-mapped
        ("64:ff9b::c633:6407", "198.51.100.7"),  # NAT64 of it
        ("2002:c633:6407::1", "198.51.100.7"),  # 6to4 of it
        ("2001:db8::7", "2001:db8::7"),
        ("fe80::7%eth0", "fe80::7"),  # a zone does not hide a link-local address
    ],
)
def test_every_form_of_a_node_address_is_the_nodes(address: str, node: str) -> None:
    assert is_node_address(ip(address), {ip(node)}) is True


@pytest.mark.parametrize("address", ["198.51.100.8", "2001:db8::8", "::ffff:198.51.100.8"])
def test_other_addresses_are_not_the_nodes(address: str) -> None:
    assert is_node_address(ip(address), {ip("198.51.100.7"), ip("2001:db8::7")}) is False


def test_the_refused_set_is_the_interfaces_but_loopback_plus_unspecified() -> None:
    interfaces = {ip("127.0.0.1"), ip("::1"), ip("203.0.113.5"), ip("fe80::1"), ip("10.0.0.2")}
    assert own_addresses(interfaces) == {
        ip("203.0.113.5"),
        ip("fe80::1"),
        ip("10.0.0.2"),
        ip("0.0.0.0"),
        ip("::"),
    }


def kernel_addresses() -> set[IPAddress]:
    """Every interface address as ``ip -j addr`` lists it (the local end, without a zone)."""
    listing = subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True, text=True)
    return {
        ip(entry["local"])
        for interface in json.loads(listing.stdout)
        for entry in interface.get("addr_info", [])
        if entry.get("family") in ("inet", "inet6")
    }


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")
def test_the_interface_reader_lists_what_the_kernel_lists() -> None:
    # Another test's namespace plumbing may add or drop a veth between the two reads: compare a
    # few times, until both agree.
    for _ in range(5):
        kernel = kernel_addresses()
        read = interface_addresses()
        if read == kernel:
            break
    assert read == kernel
    assert ip("127.0.0.1") in read
    # And every address of the interfaces socket.if_nameindex names is judged the node's own,
    # loopback but left to the private-address rule.
    assert {name for _, name in socket.if_nameindex()} >= {"lo"}
    for address in kernel:
        assert is_node_address(address, own_addresses(read)) is not address.is_loopback


def test_node_addresses_are_read_again_after_the_refresh_and_kept_when_a_read_fails() -> None:
    now = [0.0]
    answers: list[Collection[IPAddress] | OSError] = [
        {ip("203.0.113.5")},
        {ip("203.0.113.5"), ip("203.0.113.6")},
        OSError("netlink unavailable"),
    ]
    reads = 0

    def reader() -> Collection[IPAddress]:
        nonlocal reads
        answer = answers[min(reads, len(answers) - 1)]
        reads += 1
        if isinstance(answer, OSError):
            raise answer
        return answer

    node = NodeAddresses(reader, refresh=1.0, clock=lambda: now[0])
    assert ip("203.0.113.5") in node()
    now[0] = 0.5
    assert ip("203.0.113.6") not in node()  # cached
    assert reads == 1
    now[0] = 1.0
    assert ip("203.0.113.6") in node()  # an address added to an interface, within the refresh
    now[0] = 2.0
    assert ip("203.0.113.6") in node()  # the failed read kept the last answer
    assert reads == 3


def test_node_addresses_never_read_raise() -> None:
    def reader() -> Collection[IPAddress]:
        raise OSError("netlink unavailable")

    with pytest.raises(OSError, match="netlink"):
        NodeAddresses(reader)()
