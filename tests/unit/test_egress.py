"""The Browser VM egress proxy over real sockets, on 127.0.0.1 only (names: a fake resolver)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from hearth.errors import Conflict, InvalidInput
from hearth.metrics import ControllerMetrics
from hearth.network.egress import AllowRule, EgressProxy, EgressTimeouts, is_public_address

LOOPBACK = "127.0.0.1"
STEP = 5.0  # seconds any single await in these tests may take before the test fails


@dataclass
class EchoServer:
    """An upstream on 127.0.0.1 that echoes each connection until EOF, then closes it."""

    port: int = 0
    accepted: int = 0
    finished: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def until_finished(self, n: int) -> None:
        """Wait (at most ``STEP``) until ``n`` connections have been closed at this end."""
        async with asyncio.timeout(STEP):
            while self.finished < n:
                await asyncio.sleep(0.01)
        assert self.finished == n


@dataclass
class FakeResolver:
    """A resolver answering from a table, recording every question; never touches real DNS."""

    answers: dict[str, list[str]]
    calls: list[tuple[str, int]] = field(default_factory=list)
    hang: bool = False

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if self.hang:
            await asyncio.Event().wait()
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@dataclass
class Response:
    """A proxy's answer as the client saw it."""

    status: int
    headers: dict[str, str]
    body: bytes


StartProxy = Callable[..., Awaitable[EgressProxy]]


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    """A running echo server; torn down with every connection it still holds."""
    state = EchoServer()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.tasks.add(task)
        state.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            state.finished += 1
            writer.close()
            state.tasks.discard(task)

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    """Start an EgressProxy on 127.0.0.1; every one started is closed after the test."""
    proxies: list[EgressProxy] = []

    async def start(allow: Sequence[str], **options: Any) -> EgressProxy:
        proxy = EgressProxy(allow, **options)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in reversed(proxies):
        await proxy.close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def open_tunnel(
    proxy: EgressProxy, target: str, *, early: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CONNECT through the proxy and expect 200; returns the client ends of the tunnel."""
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + early)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    return reader, writer


async def ask(proxy: EgressProxy, request: bytes) -> Response:
    """Send raw bytes to the proxy, read its whole answer, and check it then closes."""
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
        status_line, *header_lines = head.decode().split("\r\n")[:-2]
        headers = dict(line.split(": ", 1) for line in header_lines)
        body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), STEP)
        assert await asyncio.wait_for(reader.read(), STEP) == b"", "the proxy must close"
        return Response(int(status_line.split(" ")[1]), headers, body)
    finally:
        writer.close()


def connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: test\r\n\r\n".encode()


def outcomes(metrics: ControllerMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("hearth_egress_requests_total", {"outcome": outcome})
    return value or 0.0


# --- tunnels -------------------------------------------------------------------------------


async def test_allowed_tunnel_echoes_bytes_both_ways(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    metrics = ControllerMetrics()
    proxy = await start_proxy([echo.target], allow_private=[echo.target], metrics=metrics)
    reader, writer = await open_tunnel(proxy, echo.target)
    payload = bytes(range(256)) * 1024  # 256 KiB: more than one read in each direction
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), STEP) == payload
    assert metrics.registry.get_sample_value("hearth_egress_tunnels_open") == 1
    writer.close()
    assert outcomes(metrics, "tunneled") == 1
    assert echo.accepted == 1


async def test_an_allowlisted_name_is_resolved_once_and_the_address_dialed(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    resolver = FakeResolver({"oauth.test": [LOOPBACK]})
    proxy = await start_proxy(
        [f"oauth.test:{echo.port}"], allow_private=[echo.target], resolver=resolver
    )
    reader, writer = await open_tunnel(proxy, f"OAuth.Test.:{echo.port}")
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), STEP) == b"hello"
    writer.close()
    assert resolver.calls == [("oauth.test", echo.port)]


async def test_bytes_sent_right_after_the_request_head_reach_the_upstream(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy([echo.target], allow_private=[echo.target])
    reader, writer = await open_tunnel(proxy, echo.target, early=b"client-hello")
    assert await asyncio.wait_for(reader.readexactly(12), STEP) == b"client-hello"
    writer.close()


async def test_a_half_close_is_passed_on_and_the_answer_still_arrives(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy([echo.target], allow_private=[echo.target])
    reader, writer = await open_tunnel(proxy, echo.target)
    writer.write(b"last words")
    writer.write_eof()
    # The echo server answers, sees EOF, closes; the proxy passes that EOF back.
    assert await asyncio.wait_for(reader.read(), STEP) == b"last words"
    writer.close()


async def test_an_idle_tunnel_is_closed(start_proxy: StartProxy, echo: EchoServer) -> None:
    proxy = await start_proxy(
        [echo.target], allow_private=[echo.target], timeouts=EgressTimeouts(idle=0.3)
    )
    reader, writer = await open_tunnel(proxy, echo.target)
    assert await asyncio.wait_for(reader.read(), STEP) == b""
    writer.close()
    await echo.until_finished(1)


async def test_close_ends_every_open_tunnel(echo: EchoServer) -> None:
    metrics = ControllerMetrics()
    async with EgressProxy([echo.target], allow_private=[echo.target], metrics=metrics) as proxy:
        tunnels = [await open_tunnel(proxy, echo.target) for _ in range(3)]
        for reader, writer in tunnels:
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), STEP) == b"ping"
        await proxy.close()
        for reader, writer in tunnels:
            # The proxy resets rather than flushes; a clean EOF or a reset both mean "gone".
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), STEP) == b""
            writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOOPBACK, proxy.port)
    await echo.until_finished(3)  # every upstream connection is closed too
    assert metrics.registry.get_sample_value("hearth_egress_tunnels_open") == 0


# --- the policy: deny wins, and it changes while the proxy runs ------------------------------


async def test_a_denied_host_gets_403_although_a_wildcard_allows_it(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    resolver = FakeResolver({"api.example.test": [LOOPBACK], "files.example.test": [LOOPBACK]})
    proxy = await start_proxy(
        [f"*.example.test:{echo.port}"],
        deny=[f"files.example.test:{echo.port}"],
        allow_private=[echo.target],
        resolver=resolver,
    )
    assert (await ask(proxy, connect(f"files.example.test:{echo.port}"))).status == 403
    _, writer = await open_tunnel(proxy, f"api.example.test:{echo.port}")
    writer.close()
    assert echo.accepted == 1
    assert resolver.calls == [("api.example.test", echo.port)]


async def test_a_new_policy_applies_at_once_and_cuts_the_tunnels_it_no_longer_allows(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    resolver = FakeResolver({"keep.test": [LOOPBACK], "drop.test": [LOOPBACK]})
    allow = [f"keep.test:{echo.port}", f"drop.test:{echo.port}"]
    with capture_logs() as logs:
        proxy = await start_proxy(
            allow, allow_private=[echo.target], resolver=resolver, owner="vm-owner-1"
        )
        kept = await open_tunnel(proxy, f"keep.test:{echo.port}")
        dropped = await open_tunnel(proxy, f"drop.test:{echo.port}")
        assert proxy.set_policy(allow, deny=[f"drop.test:{echo.port}"]) == 1
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(dropped[0].read(), STEP) == b""
    kept[1].write(b"still here")
    assert await asyncio.wait_for(kept[0].readexactly(10), STEP) == b"still here"
    assert (await ask(proxy, connect(f"drop.test:{echo.port}"))).status == 403
    # A bad entry changes nothing.
    with pytest.raises(InvalidInput, match="not a TCP port"):
        proxy.set_policy(["keep.test:99999"])
    assert proxy.allows("keep.test", echo.port)
    assert not proxy.allows("drop.test", echo.port)
    for _, writer in (kept, dropped):
        writer.close()
    owned = [entry for entry in logs if entry["event"] == "egress_tunnel_opened"]
    assert [entry["owner"] for entry in owned] == ["vm-owner-1", "vm-owner-1"]


async def test_a_new_policy_cuts_a_connect_still_resolving_its_name(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    resolver = FakeResolver({"drop.test": [LOOPBACK]}, hang=True)
    proxy = await start_proxy(
        [f"drop.test:{echo.port}"], allow_private=[echo.target], resolver=resolver
    )
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    writer.write(connect(f"drop.test:{echo.port}"))
    await writer.drain()
    while not resolver.calls:
        await asyncio.sleep(0.01)

    assert proxy.set_policy([]) == 1

    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), STEP) == b""
    writer.close()
    assert echo.accepted == 0


# --- refusals ------------------------------------------------------------------------------


async def test_a_host_not_on_the_allowlist_gets_403_and_is_never_contacted(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    metrics = ControllerMetrics()
    resolver = FakeResolver({"evil.test": [LOOPBACK]})
    proxy = await start_proxy(
        ["auth.openai.com"], allow_private=[echo.target], resolver=resolver, metrics=metrics
    )
    request = (
        f"CONNECT evil.test:{echo.port} HTTP/1.1\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n"
    )
    with capture_logs() as logs:
        answer = await ask(proxy, request.encode())
    assert answer.status == 403
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert echo.accepted == 0
    assert resolver.calls == []
    denied = [entry for entry in logs if entry["event"] == "egress_denied"]
    assert denied == [
        {
            "component": "network.egress",
            "event": "egress_denied",
            "log_level": "warning",
            "host": "evil.test",
            "port": echo.port,
            "outcome": "denied_host",
        }
    ]
    assert "c2VjcmV0" not in repr(logs)
    assert outcomes(metrics, "denied_host") == 1


async def test_the_port_is_part_of_the_allowlist_entry(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy([LOOPBACK], allow_private=[echo.target])  # means 127.0.0.1:443
    assert (await ask(proxy, connect(echo.target))).status == 403
    assert echo.accepted == 0


async def test_an_allowlisted_name_resolving_to_loopback_gets_403(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    metrics = ControllerMetrics()
    resolver = FakeResolver({"auth.example.com": ["93.184.215.14", LOOPBACK]})
    proxy = await start_proxy([f"auth.example.com:{echo.port}"], resolver=resolver, metrics=metrics)
    answer = await ask(proxy, connect(f"auth.example.com:{echo.port}"))
    assert answer.status == 403
    assert echo.accepted == 0
    assert outcomes(metrics, "denied_address") == 1


async def test_an_allowlisted_loopback_literal_without_allow_private_gets_403(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy([echo.target, f"[::ffff:127.0.0.1]:{echo.port}"])
    assert (await ask(proxy, connect(echo.target))).status == 403
    assert (await ask(proxy, connect(f"[::ffff:127.0.0.1]:{echo.port}"))).status == 403
    assert echo.accepted == 0


async def test_allow_private_excepts_only_the_exact_address_and_port(
    start_proxy: StartProxy, echo: EchoServer, closed_port: int
) -> None:
    resolver = FakeResolver({"oauth.test": [LOOPBACK]})
    proxy = await start_proxy(
        [f"oauth.test:{closed_port}"],
        allow_private=[echo.target],
        resolver=resolver,
    )
    assert (await ask(proxy, connect(f"oauth.test:{closed_port}"))).status == 403


async def test_plain_http_proxying_gets_405(start_proxy: StartProxy, echo: EchoServer) -> None:
    proxy = await start_proxy([echo.target], allow_private=[echo.target])
    answer = await ask(proxy, f"GET http://{echo.target}/secret/path HTTP/1.1\r\n\r\n".encode())
    assert answer.status == 405
    assert answer.headers["Allow"] == "CONNECT"
    assert echo.accepted == 0


async def test_httpx_sending_plain_http_through_the_proxy_gets_405(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy([echo.target], allow_private=[echo.target])
    async with httpx.AsyncClient(proxy=f"http://{LOOPBACK}:{proxy.port}", timeout=STEP) as client:
        response = await client.get(f"http://{echo.target}/")
    assert response.status_code == 405
    assert echo.accepted == 0


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
        pytest.param(b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", id="no-port"),
        pytest.param(b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", id="port-out-of-range"),
        pytest.param(b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", id="unbracketed-ipv6"),
        pytest.param(b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n", id="bad-host"),
        pytest.param(b"CONNECT a.test:443 HTTP/2.0\r\n\r\n", id="bad-version"),
        pytest.param(b"CONNECT  a.test:443 HTTP/1.1\r\n\r\n", id="double-space"),
        pytest.param(b"CONNECT a.test:443 HTTP/1.1\r\nno colon here\r\n\r\n", id="bad-header"),
        pytest.param(b"CONNECT a.test:443 HTTP/1.1\r\n", id="eof-before-blank-line"),
    ],
)
async def test_a_malformed_request_gets_400(start_proxy: StartProxy, request_bytes: bytes) -> None:
    resolver = FakeResolver({})
    proxy = await start_proxy(["a.test", "*.a.test"], resolver=resolver)
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    writer.write(request_bytes)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), STEP)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert resolver.calls == []


async def test_an_oversize_request_head_gets_400(start_proxy: StartProxy, echo: EchoServer) -> None:
    proxy = await start_proxy([echo.target], allow_private=[echo.target])
    padding = "X-Padding: " + "a" * 9000 + "\r\n"
    answer = await ask(proxy, f"CONNECT {echo.target} HTTP/1.1\r\n{padding}\r\n".encode())
    assert answer.status == 400
    assert b"too large" in answer.body
    assert echo.accepted == 0


async def test_an_oversize_head_without_an_end_gets_400_before_the_client_finishes(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(["a.test"])
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    writer.write(b"CONNECT a.test:443 HTTP/1.1\r\nX-Padding: " + b"a" * 9000)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_slow_request_head_gets_408(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(["a.test"], timeouts=EgressTimeouts(request=0.2))
    answer = await ask(proxy, b"CONNECT a.test:443 HTTP/1.1\r\n")
    assert answer.status == 408


# --- upstream failures ---------------------------------------------------------------------


async def test_a_closed_upstream_port_gets_502(start_proxy: StartProxy, closed_port: int) -> None:
    metrics = ControllerMetrics()
    target = f"{LOOPBACK}:{closed_port}"
    proxy = await start_proxy([target], allow_private=[target], metrics=metrics)
    assert (await ask(proxy, connect(target))).status == 502
    assert outcomes(metrics, "upstream_failed") == 1


async def test_a_name_that_does_not_resolve_gets_502(start_proxy: StartProxy) -> None:
    resolver = FakeResolver({})
    proxy = await start_proxy(["*.nowhere.test"], resolver=resolver)
    assert (await ask(proxy, connect("a.nowhere.test:443"))).status == 502
    assert resolver.calls == [("a.nowhere.test", 443)]


async def test_a_resolver_that_hangs_past_the_connect_deadline_gets_504(
    start_proxy: StartProxy,
) -> None:
    metrics = ControllerMetrics()
    resolver = FakeResolver({}, hang=True)
    proxy = await start_proxy(
        ["slow.test"], resolver=resolver, timeouts=EgressTimeouts(connect=0.2), metrics=metrics
    )
    assert (await ask(proxy, connect("slow.test:443"))).status == 504
    assert outcomes(metrics, "upstream_timeout") == 1


async def test_connections_beyond_the_limit_get_503(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy([echo.target], allow_private=[echo.target], max_connections=1)
    _, writer = await open_tunnel(proxy, echo.target)
    assert (await ask(proxy, connect(echo.target))).status == 503
    writer.close()


# --- allowlist and address rules -----------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "host", "port", "matches"),
    [
        ("auth.openai.com", "auth.openai.com", 443, True),
        ("auth.openai.com", "auth.openai.com", 80, False),
        ("auth.openai.com", "openai.com", 443, False),
        ("auth.openai.com", "evil-auth.openai.com", 443, False),
        ("Auth.OpenAI.com.", "auth.openai.com", 443, True),
        ("auth.openai.com:8443", "auth.openai.com", 8443, True),
        ("*.google.com", "accounts.google.com", 443, True),
        ("*.google.com", "a.b.google.com", 443, True),
        ("*.google.com", "google.com", 443, False),
        ("*.google.com", "evilgoogle.com", 443, False),
        ("*.google.com", "google.com.evil.test", 443, False),
        ("*.google.com", "accounts.google.com", 80, False),
        ("*.google.com:8443", "accounts.google.com", 8443, True),
        ("*.0.0.1", "127.0.0.1", 443, False),
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]", "::1", 443, True),
    ],
)
def test_allow_rules_match_exact_hosts_and_subdomain_wildcards(
    entry: str, host: str, port: int, matches: bool
) -> None:
    assert AllowRule.parse(entry).matches(host, port) is matches


@pytest.mark.parametrize(
    "entry", ["", "*", "*.", "a..b", "host:0", "host:65536", "host:https", "::1", "[x]:1", "a b"]
)
def test_invalid_allow_entries_are_refused_at_construction(entry: str) -> None:
    with pytest.raises(InvalidInput):
        EgressProxy([entry])


@pytest.mark.parametrize("entry", ["127.0.0.1", "localhost:8443", "[::1]", "10.0.0.1:x"])
def test_allow_private_entries_must_be_exact_ip_and_port(entry: str) -> None:
    with pytest.raises(InvalidInput):
        EgressProxy(["a.test"], allow_private=[entry])


# (address, why it is refused): IANA's special-purpose registries, and IPv4 inside IPv6.
REFUSED_ADDRESSES = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network 0.0.0.0/8"),
    ("10.1.2.3", "private 10/8"),
    ("100.64.0.1", "shared address space (CGNAT) 100.64/10"),
    ("100.127.255.254", "shared address space (CGNAT) 100.64/10"),
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback 127/8"),
    ("169.254.169.254", "link-local, cloud metadata"),
    ("172.16.0.1", "private 172.16/12"),
    ("172.31.255.254", "private 172.16/12"),
    ("192.0.0.1", "IETF protocol assignments 192.0.0.0/24"),
    ("192.0.0.9", "IETF protocol assignments 192.0.0.0/24 (PCP anycast)"),
    ("192.0.0.10", "IETF protocol assignments 192.0.0.0/24 (TURN anycast)"),
    ("192.0.0.170", "IETF protocol assignments 192.0.0.0/24 (NAT64 discovery)"),
    ("192.0.2.1", "documentation TEST-NET-1"),
    ("192.88.99.1", "deprecated 6to4 relay anycast"),
    ("192.168.1.1", "private 192.168/16"),
    ("198.18.0.1", "benchmarking 198.18/15"),
    ("198.19.255.254", "benchmarking 198.18/15"),
    ("198.51.100.1", "documentation TEST-NET-2"),
    ("203.0.113.1", "documentation TEST-NET-3"),
    ("224.0.0.251", "multicast"),
    ("233.252.0.1", "multicast test net"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved 240/4"),
    ("255.255.255.255", "limited broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::8.8.8.8", "IPv4-compatible, deprecated"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::a00:1", "IPv4-compatible private"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("::ffff:192.0.0.9", "IPv4-mapped IETF protocol assignment"),
    ("64:ff9b::a00:1", "NAT64 of private 10.0.0.1"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of link-local 169.254.169.254"),
    ("64:ff9b::c000:9", "NAT64 of 192.0.0.9"),
    ("64:ff9b:1::808:808", "local-use NAT64 64:ff9b:1::/48"),
    ("100::1", "discard-only 100::/64"),
    ("2001::1", "Teredo 2001::/32"),
    ("2001:2::1", "benchmarking 2001:2::/48"),
    ("2001:20::1", "ORCHIDv2 2001:20::/28"),
    ("2001:db8::1", "documentation 2001:db8::/32"),
    ("2002:7f00:1::", "6to4 of loopback"),
    ("2002:a00:1::1", "6to4 of private 10.0.0.1"),
    ("2002:c000:209::1", "6to4 of 192.0.2.9 (TEST-NET-1)"),
    ("3fff::1", "documentation 3fff::/20"),
    ("3fff:fff:ffff::1", "documentation 3fff::/20"),
    ("5f00::1", "SRv6 SIDs 5f00::/16"),
    ("fc00::1", "unique local fc00::/7"),
    ("fd12:3456::1", "unique local fc00::/7"),
    ("fe80::1", "link-local fe80::/10"),
    ("fec0::1", "site-local fec0::/10, deprecated"),
    ("feff:ffff::1", "site-local fec0::/10, deprecated"),
    ("ff02::1", "multicast"),
    ("4000::1", "not allocated as unicast"),
]
PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "93.184.215.14",
    "1.1.1.1",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "192.0.1.1",  # just above 192.0.0.0/24
    "198.17.255.255",  # just below benchmarking
    "198.20.0.0",  # just above benchmarking
    "223.255.255.255",  # just below multicast
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "3000::1",  # 2000::/3 below the documentation 3fff::/20
    "3fff:1000::1",  # just above 3fff::/20
    "::ffff:8.8.8.8",  # IPv4-mapped: it is 8.8.8.8
    "64:ff9b::808:808",  # NAT64 (RFC 6052) in front of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(
    ("address", "why"), REFUSED_ADDRESSES, ids=[a for a, _ in REFUSED_ADDRESSES]
)
def test_special_purpose_addresses_are_not_public(address: str, why: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is False, why


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_globally_reachable_unicast_addresses_are_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is True


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connect the test process attempts to a non-loopback address, refused on the spot
    so that a proxy that wrongly dials one still sends no packet off the machine."""
    attempted: list[str] = []
    real = asyncio.open_connection

    async def loopback_only(host: str, port: int, **options: Any) -> Any:
        if not ipaddress.ip_address(host).is_loopback:
            attempted.append(host)
            raise ConnectionRefusedError(f"test guard: {host} is not loopback")
        return await real(host, port, **options)

    monkeypatch.setattr(asyncio, "open_connection", loopback_only)
    return attempted


@pytest.mark.parametrize("address", ["fec0::1", "192.0.0.9", "3fff::1"])
async def test_a_name_resolving_to_site_local_protocol_or_documentation_space_gets_403(
    start_proxy: StartProxy, dials: list[str], address: str
) -> None:
    metrics = ControllerMetrics()
    resolver = FakeResolver({"auth.example.com": [address]})
    proxy = await start_proxy(["auth.example.com"], resolver=resolver, metrics=metrics)
    assert (await ask(proxy, connect("auth.example.com:443"))).status == 403
    assert dials == []
    assert outcomes(metrics, "denied_address") == 1


async def test_the_port_is_only_known_after_start(echo: EchoServer) -> None:
    proxy = EgressProxy([echo.target])
    with pytest.raises(Conflict, match="not started"):
        _ = proxy.port
    await proxy.start()
    assert proxy.port > 0
    await proxy.close()
    await proxy.close()  # idempotent


# --- pins ----------------------------------------------------------------------------------


async def test_a_pinned_name_is_dialed_at_its_pin_without_resolving(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    resolver = FakeResolver({})
    proxy = await start_proxy(
        ["auth.vendor.test"], pins={"auth.vendor.test:443": echo.target}, resolver=resolver
    )
    reader, writer = await open_tunnel(proxy, "Auth.Vendor.Test:443")
    writer.write(b"client-hello")
    assert await asyncio.wait_for(reader.readexactly(12), STEP) == b"client-hello"
    writer.close()
    assert resolver.calls == []
    assert echo.accepted == 1


async def test_a_pin_does_not_widen_the_allowlist(
    start_proxy: StartProxy, echo: EchoServer
) -> None:
    proxy = await start_proxy(["auth.vendor.test"], pins={"other.vendor.test": echo.target})
    response = await ask(proxy, connect("other.vendor.test:443"))
    assert response.status == 403
    assert echo.accepted == 0


@pytest.mark.parametrize("pin", [("bad host!", "127.0.0.1:1"), ("a.test", "a.test:1")])
def test_malformed_pins_are_refused_at_construction(pin: tuple[str, str]) -> None:
    with pytest.raises(InvalidInput):
        EgressProxy(["a.test"], pins=dict([pin]))
