"""Numbers in request headers (Content-Length, Last-Event-ID): ASCII decimal digits only.

``str.isdigit`` also takes digits such as "²", which ``int`` refuses: a header holding one
must be an ordinary bad value, not a 500.
"""

from __future__ import annotations

import re

_DECIMAL = re.compile(r"[0-9]{1,19}")
# The largest id or length a header or query may name: the store's ids are signed 64-bit.
MAX_INT64 = 2**63 - 1


def decimal(value: str | None) -> int | None:
    """``value``, stripped, as a non-negative integer; None unless it is 1 to 19 ASCII digits
    naming at most ``MAX_INT64``."""
    if value is None or not _DECIMAL.fullmatch(value.strip()):
        return None
    number = int(value.strip())
    return number if number <= MAX_INT64 else None
