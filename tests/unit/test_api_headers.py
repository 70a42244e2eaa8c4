"""Numbers in request headers: ASCII decimal digits only."""

from __future__ import annotations

import pytest

from hearth.api.headers import decimal


@pytest.mark.parametrize(("value", "number"), [("0", 0), (" 42 ", 42), ("9" * 19, 10**19 - 1)])
def test_ascii_digits_are_a_number(value: str, number: int) -> None:
    assert decimal(value) == number


@pytest.mark.parametrize("value", [None, "", " ", "²", "١٢", "-1", "+1", "1e3", "0x10", "9" * 20])
def test_anything_else_is_none(value: str | None) -> None:
    assert decimal(value) is None
