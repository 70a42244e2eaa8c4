"""How a webhook URL goes on the wire: its host in ASCII, its ``Host`` header's form."""

from __future__ import annotations

import pytest

from hearth.errors import InvalidInput
from hearth.events.targets import Target


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
