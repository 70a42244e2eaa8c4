"""The egress proxy holds a tunnel's TLS ClientHello to the CONNECT target's name (no domain
fronting), over real sockets on 127.0.0.1 only (the allowlisted name is pinned there)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from collections.abc import AsyncIterator

import pytest

from hearth.images.layout import guest_asset
from hearth.metrics import ControllerMetrics
from hearth.network.client_hello import NotAClientHello, parse_client_hello, server_name
from hearth.network.egress import EgressProxy, EgressTimeouts

LOOPBACK = "127.0.0.1"
STEP = 5.0
ALLOWED = "api.allowed.test"


def client_hello(name: str | None) -> bytes:
    """The ClientHello a real TLS client (Python's ssl) sends for the server name ``name``."""
    context = ssl.create_default_context()
    context.check_hostname = name is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def with_extension(record: bytes, kind: int, data: bytes) -> bytes:
    """A one-record ClientHello (``record``) with one more extension appended to its list."""
    body = bytearray(record[9:])
    at = 2 + 32  # legacy_version, random
    at += 1 + body[at]  # legacy_session_id
    at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher_suites
    at += 1 + body[at]  # legacy_compression_methods
    extension = kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    body[at : at + 2] = (int.from_bytes(body[at : at + 2], "big") + len(extension)).to_bytes(
        2, "big"
    )
    body += extension
    handshake = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def outer_ech(inner: bytes) -> bytes:
    """An outer ``encrypted_client_hello`` payload (type outer, an HPKE suite, config id, enc)
    carrying ``inner`` as the sealed inner ClientHello."""
    enc = os.urandom(32)
    return (
        b"\x00\x00\x01\x00\x01\x07"
        + len(enc).to_bytes(2, "big")
        + enc
        + len(inner).to_bytes(2, "big")
        + inner
    )


ECH = 0xFE0D  # encrypted_client_hello
ESNI = 0xFFCE  # encrypted_server_name (the drafts before ECH)


class Upstream:
    """A server on 127.0.0.1 that keeps every byte it receives and greets each client first."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0
        self.connected = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connected.set()
        writer.write(b"hello\n")
        try:
            while data := await reader.read(65536):
                self.received += data
        finally:
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    server = await asyncio.start_server(state.serve, LOOPBACK, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def metrics() -> ControllerMetrics:
    return ControllerMetrics()


@pytest.fixture
async def proxy(upstream: Upstream, metrics: ControllerMetrics) -> AsyncIterator[EgressProxy]:
    target = f"{LOOPBACK}:{upstream.port}"
    proxy = EgressProxy(
        [f"{ALLOWED}:443", target],
        pins={f"{ALLOWED}:443": target},
        allow_private=[target],
        metrics=metrics,
        timeouts=EgressTimeouts(request=0.5),
    )
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def tunnel(
    proxy: EgressProxy, target: str, first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    writer.write(first)
    await writer.drain()
    return reader, writer


async def assert_cut(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Upstream
) -> None:
    """The proxy closed the tunnel, the upstream's greeting through, and none of the client's
    bytes reached the upstream."""
    assert await asyncio.wait_for(reader.read(), STEP) == b"hello\n"
    assert upstream.received == b""
    writer.close()


async def until_received(upstream: Upstream, data: bytes) -> None:
    """Wait (at most ``STEP``) until the upstream received exactly ``data``."""
    async with asyncio.timeout(STEP):
        while len(upstream.received) < len(data):
            await asyncio.sleep(0.01)
    assert bytes(upstream.received) == data


def refused(metrics: ControllerMetrics) -> float:
    labels = {"outcome": "denied_server_name"}
    return metrics.registry.get_sample_value("hearth_egress_requests_total", labels) or 0.0


@pytest.mark.parametrize(
    ("to_ip_literal", "name"),
    [
        (False, "API.allowed.test"),  # the CONNECT host's own name, in another case
        (True, "anything.example"),  # an IP literal names no site: not held to a name
    ],
)
async def test_a_client_hello_for_the_connect_host_reaches_the_upstream(
    proxy: EgressProxy, upstream: Upstream, to_ip_literal: bool, name: str
) -> None:
    hello = client_hello(name)
    target = f"{LOOPBACK}:{upstream.port}" if to_ip_literal else f"{ALLOWED}:443"
    _, writer = await tunnel(proxy, target, hello)
    await until_received(upstream, hello)
    assert proxy.traffic.refused == 0
    writer.close()


@pytest.mark.parametrize("name", ["evil.example", "api.allowed.test.evil.example", None])
async def test_a_client_hello_for_another_name_or_none_is_cut_before_the_upstream(
    proxy: EgressProxy, upstream: Upstream, metrics: ControllerMetrics, name: str | None
) -> None:
    reader, writer = await tunnel(proxy, f"{ALLOWED}:443", client_hello(name))
    await assert_cut(reader, writer, upstream)
    assert refused(metrics) == 1
    assert proxy.traffic.refused == 1


async def test_a_client_hello_split_across_records_and_writes_is_read_whole(
    proxy: EgressProxy, upstream: Upstream
) -> None:
    hello = client_hello("evil.example")
    handshake = hello[5:]
    # The same handshake message in two records, each sent in pieces.
    split = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
        for part in (handshake[:40], handshake[40:])
    )
    reader, writer = await tunnel(proxy, f"{ALLOWED}:443", split[:3])
    for at in range(3, len(split), 100):
        writer.write(split[at : at + 100])
        await writer.drain()
        await asyncio.sleep(0.005)
    await assert_cut(reader, writer, upstream)


async def test_a_client_hello_that_never_ends_is_cut_after_the_request_timeout(
    proxy: EgressProxy, upstream: Upstream
) -> None:
    hello = client_hello(ALLOWED)
    reader, writer = await tunnel(proxy, f"{ALLOWED}:443", hello[:20])
    await assert_cut(reader, writer, upstream)


async def test_a_protocol_that_is_not_tls_passes_and_the_server_may_speak_first(
    proxy: EgressProxy, upstream: Upstream
) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
    writer.write(f"CONNECT {ALLOWED}:443 HTTP/1.1\r\n\r\n".encode())
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    assert await asyncio.wait_for(reader.readline(), STEP) == b"hello\n"
    writer.write(b"SSH-2.0-test\r\n")
    await writer.drain()
    await until_received(upstream, b"SSH-2.0-test\r\n")
    writer.close()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x03\x03" + bytes(32) + b"\x20",  # the session id runs past the end
        # two server_name extensions, each naming "a"
        b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
        b"\x00\x14" + b"\x00\x00\x00\x06\x00\x04\x00\x00\x01a" * 2,
    ],
)
def test_malformed_client_hellos_are_refused(body: bytes) -> None:
    with pytest.raises(NotAClientHello):
        server_name(body)


def test_the_server_name_of_a_real_client_hello_is_read() -> None:
    hello = client_hello("Api.Allowed.Test")
    assert server_name(hello[9:]) == "api.allowed.test"  # after the record and handshake headers
    assert server_name(client_hello(None)[9:]) is None


@pytest.mark.parametrize("kind", [ECH, ESNI])
async def test_a_client_hello_that_hides_its_server_name_is_cut_although_its_outer_name_is_allowed(
    proxy: EgressProxy, upstream: Upstream, metrics: ControllerMetrics, kind: int
) -> None:
    # The sealed inner ClientHello could name any site behind the same front end.
    hello = with_extension(client_hello(ALLOWED), kind, outer_ech(os.urandom(200)))
    assert server_name(hello[9:]) == ALLOWED  # the outer name alone would pass
    reader, writer = await tunnel(proxy, f"{ALLOWED}:443", hello)
    await assert_cut(reader, writer, upstream)
    assert refused(metrics) == 1


def test_an_encrypted_or_grease_ech_extension_marks_the_client_hello() -> None:
    plain = client_hello(ALLOWED)
    assert not parse_client_hello(plain[9:]).encrypted_name
    # GREASE ECH (what Chromium sends without an ECH config) looks the same on the wire.
    grease = with_extension(plain, ECH, outer_ech(os.urandom(144)))
    assert parse_client_hello(grease[9:]).encrypted_name
    assert parse_client_hello(with_extension(plain, ESNI, b"\x13\x01")[9:]).encrypted_name


def test_the_browser_vms_chromium_sends_no_encrypted_client_hello() -> None:
    script = guest_asset("hearth-browser").decode()
    # Chromium 156 sends a GREASE ECH extension even with --disable-features=EncryptedClientHello
    # (measured); only its managed policy turns ECH off.
    policy = re.search(r"printf '(\{.*\})\\n'[^>]*> /etc/chromium/policies/managed/", script, re.S)
    assert policy is not None
    assert json.loads(policy.group(1))["EncryptedClientHelloEnabled"] is False
