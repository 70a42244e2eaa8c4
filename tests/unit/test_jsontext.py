"""The strict JSON decoder the agent and the run parsers share: what it refuses, and how."""

from __future__ import annotations

import sys

import pytest

from hearth_agent.jsontext import JsonTextError, decode_json


@pytest.mark.parametrize(
    "text",
    [
        "1e999",  # past a double: json.loads gave float("inf"), which encodes back as Infinity
        '{"n": -1e999}',
        '{"n": 1' + "0" * 400 + ".5}",
        "9" * (sys.get_int_max_str_digits() + 1),  # json.loads raised a plain ValueError
        '{"n": [-' + "9" * 5000 + "]}",
        "NaN",
        "Infinity",
    ],
    ids=["inf", "-inf-nested", "long-float", "digits-limit", "5000-digits", "nan", "infinity"],
)
def test_numbers_no_json_reader_keeps_are_refused_as_json_text_errors(text: str) -> None:
    with pytest.raises(JsonTextError) as refused:
        decode_json(text.encode())
    assert "99999" not in str(refused.value)  # the message says why, never quotes the input


def test_numbers_up_to_the_limits_decode() -> None:
    digits = "9" * sys.get_int_max_str_digits()
    assert decode_json(f'{{"a": 1e308, "b": -2.5e-400, "c": {digits}}}'.encode()) == {
        "a": 1e308,
        "b": -0.0,
        "c": int(digits),
    }
