"""Agent versions as the controller compares them: dotted numbers ("0.1.1"), nothing else."""

from __future__ import annotations

import re

_VERSION = re.compile(r"\d{1,6}(?:\.\d{1,6}){0,3}")


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"0.1.1"`` → ``(0, 1, 1)``; None for anything that is not 1 to 4 dotted numbers."""
    if not _VERSION.fullmatch(text):
        return None
    return tuple(int(part) for part in text.split("."))


def is_outdated(version: str | None, minimum: str) -> bool:
    """Whether an agent reporting ``version`` is older than ``minimum`` ("" : nothing is; an
    agent that reported no version, or one that cannot be read, is outdated once a minimum is
    set)."""
    wanted = parse_version(minimum)
    if wanted is None:
        return False
    found = parse_version(version or "")
    if found is None:
        return True
    width = max(len(found), len(wanted))
    return found + (0,) * (width - len(found)) < wanted + (0,) * (width - len(wanted))
