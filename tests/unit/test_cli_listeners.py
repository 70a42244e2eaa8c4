"""``hearth serve``'s listening sockets, bound before the controller starts: every address the
host resolves to (as asyncio's server binds them, IPv6 ones for IPv6 only), or one line naming
the address, the setting and the cause, nothing kept. Real sockets on loopback; where a test
needs a name with several addresses, the resolver's answer is given."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from hearth.cli import listeners
from hearth.cli.listeners import listening_sockets
from hearth.errors import ConfigError

SETTING = {"host": "HEARTH_HOST", "port": "HEARTH_PORT"}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on at 127.0.0.1."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(*addresses: str) -> Any:
    """A resolver answering ``addresses`` for any name, as getaddrinfo lists them."""

    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port, 0, 0) if ":" in address else (address, port),
            )
            for address in addresses
        ]

    return resolve


def test_a_port_in_use_names_the_address_and_what_to_do(taken_port: int) -> None:
    with pytest.raises(ConfigError) as refused:
        listening_sockets("127.0.0.1", taken_port, setting=SETTING)
    assert refused.value.message == (
        f"cannot listen on 127.0.0.1:{taken_port}: Address already in use (another program "
        "listens there: stop it, or set HEARTH_PORT to another port); nothing was started"
    )


def test_an_ipv6_address_is_bound_for_ipv6_only() -> None:
    for host in ("::1", "::"):
        (sock,) = listening_sockets(host, _free_port(), setting=SETTING)
        with sock:
            assert sock.family == socket.AF_INET6
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_every_address_of_a_name_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listeners.socket, "getaddrinfo", _answers("127.0.0.1", "::1", "127.0.0.1"))
    port = _free_port()
    sockets = listening_sockets("dual.example", port, setting=SETTING)
    try:
        assert sorted(s.getsockname()[0] for s in sockets) == ["127.0.0.1", "::1"]
        assert {s.getsockname()[1] for s in sockets} == {port}
    finally:
        for sock in sockets:
            sock.close()


def test_one_address_that_cannot_be_had_keeps_none(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    monkeypatch.setattr(listeners.socket, "getaddrinfo", _answers("::1", "127.0.0.1"))
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken_port}"):
        listening_sockets("dual.example", taken_port, setting=SETTING)
    with socket.socket(socket.AF_INET6) as again:  # the ::1 socket was let go
        again.bind(("::1", taken_port))


def test_an_address_not_of_this_host_names_the_host_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listeners.socket, "getaddrinfo", _answers("192.0.2.1"))  # TEST-NET-1
    with pytest.raises(ConfigError) as refused:
        listening_sockets("elsewhere.example", _free_port(), setting=SETTING)
    assert "Cannot assign requested address (HEARTH_HOST=elsewhere.example)" in str(
        refused.value.message
    )


def test_a_name_that_resolves_to_nothing_names_the_host_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unknown(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(listeners.socket, "getaddrinfo", unknown)
    with pytest.raises(ConfigError) as refused:
        listening_sockets("nowhere.example", 4000, setting={"host": "--host", "port": "--port"})
    assert refused.value.message == (
        "--host=nowhere.example names no address here: Name or service not known; "
        "nothing was started"
    )
