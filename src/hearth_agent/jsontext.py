"""Strict JSON decoding shared by request bodies and stored files."""

from __future__ import annotations

import json
import math
import sys

# Deeper than any document the agent reads (credential files nest 3 levels, request bodies 2),
# and far below the interpreter's recursion limit, so nothing that later walks a decoded value
# (validation, ``json.dumps``) can hit a RecursionError.
MAX_DEPTH = 64


class JsonTextError(ValueError):
    """The bytes are not strict UTF-8 JSON; the message says why without quoting the input."""


def _reject_constant(name: str) -> object:
    raise JsonTextError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonTextError("a number is out of the range of a double")
    return value


def _depth(value: object) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in item)
    return deepest


def decode_json(data: bytes) -> object:
    """Decode UTF-8 JSON strictly: no byte-order mark, no other encodings, no NaN or Infinity,
    no number past a double or past the interpreter's digit limit for integers, and at most
    ``MAX_DEPTH`` levels of nesting.

    ``json.loads`` alone would also accept UTF-16/32 and the non-standard constants; a CLI reading
    the stored file might not, so they are refused here. It turns ``1e999`` into infinity, which
    ``json.dumps`` writes back as the constant, so that is refused too (RFC 8259 lets a reader
    limit the range of numbers). An integer of more digits than ``sys.get_int_max_str_digits()``
    makes it raise a plain ValueError, and nesting deeper than the interpreter's recursion limit a
    RecursionError: both are the input's fault, not ours, so both are a JsonTextError here.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonTextError(f"body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except JsonTextError:
        raise
    except json.JSONDecodeError as exc:
        # exc.msg and position only: str(exc) is safe too, but keep the input out by construction.
        raise JsonTextError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:
        # The only other ValueError json.loads raises: an integer past the digit limit.
        limit = sys.get_int_max_str_digits()
        raise JsonTextError(f"an integer of more than {limit} digits") from exc
    except RecursionError:
        raise JsonTextError(f"nesting deeper than {MAX_DEPTH} levels") from None
    if _depth(value) > MAX_DEPTH:
        raise JsonTextError(f"nesting deeper than {MAX_DEPTH} levels")
    return value
