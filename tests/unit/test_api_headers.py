"""Numbers in request headers: ASCII decimal digits only."""

from __future__ import annotations

import pytest

from hearth.api.headers import decimal


@pytest.mark.parametrize(("value", "number"), [("0", 0), (" 42 ", 42), (str(2**63 - 1), 2**63 - 1)])
def test_ascii_digits_are_a_number(value: str, number: int) -> None:
    assert decimal(value) == number


@pytest.mark.parametrize(
    "value", [None, "", " ", "²", "١٢", "-1", "+1", "1e3", "0x10", "9" * 20, str(2**63), "9" * 19]
)
def test_anything_else_is_none(value: str | None) -> None:
    # Past a signed 64-bit id the store could not even compare it: refused like any bad value.
    assert decimal(value) is None
