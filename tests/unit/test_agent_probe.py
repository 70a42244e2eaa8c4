"""Validation of probe bodies and the TCP probe itself, against real loopback sockets."""

from __future__ import annotations

import socket

import pytest

from hearth_agent.errors import InvalidInput
from hearth_agent.probe import (
    DEFAULT_TIMEOUT_MS,
    ProbeOutcome,
    ProbeTarget,
    parse_probe,
    probe_tcp,
)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "::1",
        "fe80::1%eth0",
        "localhost",
        "api.example.com",
        "api.example.com.",
        "my_service",
        "xn--bcher-kva.example",
        "a" * 63 + "." + "b" * 63,
    ],
)
def test_parse_probe_accepts_addresses_and_hostnames(host: str) -> None:
    assert parse_probe({"host": host, "port": 443}) == ProbeTarget(
        host=host, port=443, timeout_ms=DEFAULT_TIMEOUT_MS
    )


@pytest.mark.parametrize(
    "host", ["a" * 64 + ".example", "trailing-.example", "a..b", ".", "bücher.example", "a/b"]
)
def test_parse_probe_refuses_malformed_hostnames(host: str) -> None:
    with pytest.raises(InvalidInput, match="'host'"):
        parse_probe({"host": host, "port": 443})


def test_parse_probe_accepts_the_timeout_bounds() -> None:
    assert parse_probe({"host": "h", "port": 1, "timeout_ms": 1}).timeout_ms == 1
    assert parse_probe({"host": "h", "port": 65535, "timeout_ms": 10_000}).timeout_ms == 10_000


def test_probe_connects_to_a_listener_and_reports_no_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        result = probe_tcp(
            ProbeTarget(host="127.0.0.1", port=listener.getsockname()[1], timeout_ms=1000)
        )
    assert (result.outcome, result.error, result.connected) == (ProbeOutcome.CONNECTED, None, True)
    assert result.elapsed_ms >= 0.0


def test_probe_to_a_port_without_listener_is_refused() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        result = probe_tcp(
            ProbeTarget(host="127.0.0.1", port=bound.getsockname()[1], timeout_ms=1000)
        )
    assert (result.outcome, result.error, result.connected) == (
        ProbeOutcome.REFUSED,
        "connection refused",
        False,
    )
