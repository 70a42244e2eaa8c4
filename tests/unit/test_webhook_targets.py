"""How a webhook URL goes on the wire: its host in ASCII, its ``Host`` header's form."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from hearth.errors import InvalidInput
from hearth.events import targets
from hearth.events.targets import Target
from hearth.network.node_addresses import NodeAddresses


def test_an_international_name_is_sent_in_its_ascii_form() -> None:
    target = Target.parse("https://bücher.example/hook")
    assert target.host == "xn--bcher-kva.example"
    assert target.netloc == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("url", "netloc"),
    [
        ("https://[2001:db8::1]:8443/h", "[2001:db8::1]:8443"),
        ("https://[2001:db8::1]/h", "[2001:db8::1]"),
        ("http://hooks.example:80/h", "hooks.example"),
        ("http://hooks.example:8080/h", "hooks.example:8080"),
        ("http://192.0.2.7:443/h", "192.0.2.7:443"),
    ],
)
def test_the_host_header_brackets_ipv6_and_names_a_port_not_the_schemes(
    url: str, netloc: str
) -> None:
    assert Target.parse(url).netloc == netloc


def test_a_label_longer_than_63_characters_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not a valid name"):
        Target.parse(f"https://{'a' * 64}.example/hook")


async def test_a_webhook_at_this_hosts_own_public_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It reached the controller itself (its API, a store on the host) from outside.
    own = NodeAddresses(lambda: {ip_address("192.0.0.10"), ip_address("8.8.4.4")})
    monkeypatch.setattr(targets, "node_addresses", own)
    with pytest.raises(InvalidInput, match="this host's own"):
        await Target.parse("https://8.8.4.4/hook").address(allow_private=False)
    assert await Target.parse("https://8.8.8.8/hook").address(allow_private=False) == "8.8.8.8"
    assert await Target.parse("https://[::ffff:8.8.4.4]/hook").address(allow_private=True)

    async def both(host: str, port: int) -> list[str]:
        return ["8.8.4.4", "8.8.8.8"]

    chosen = await Target.parse("https://hooks.example/x").address(
        allow_private=False, resolver=both
    )
    assert chosen == "8.8.8.8"
