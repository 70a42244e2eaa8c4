"""Strict JSON decoding shared by request bodies and stored files."""

from __future__ import annotations

import json


class JsonTextError(ValueError):
    """The bytes are not strict UTF-8 JSON; the message says why without quoting the input."""


def _reject_constant(name: str) -> object:
    raise JsonTextError(f"{name} is not valid JSON")


def decode_json(data: bytes) -> object:
    """Decode UTF-8 JSON strictly: no byte-order mark, no other encodings, no NaN or Infinity.

    ``json.loads`` alone would also accept UTF-16/32 and the non-standard constants; a CLI reading
    the stored file might not, so they are refused here.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonTextError(f"body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        # exc.msg and position only: str(exc) is safe too, but keep the input out by construction.
        raise JsonTextError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
