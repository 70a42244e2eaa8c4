"""Agent versions as the controller compares them: dotted numbers ("0.1.1"), nothing else."""

from __future__ import annotations

import re

# The longest version a VM's row holds (the store's ``agent_version`` column, String(32)).
AGENT_VERSION_MAX = 32
# How much of a refused version a log line or a VM's error quotes.
QUOTED_VERSION_MAX = 40
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


def version_problem(version: str) -> str | None:
    """Why an agent's reported version cannot be recorded, or None when it is short printable
    text (empty is fine: an agent that reports none)."""
    if len(version) <= AGENT_VERSION_MAX and version.isprintable():
        return None
    return (
        f"its agent reports a version that is not printable text of at most "
        f"{AGENT_VERSION_MAX} characters: {version[:QUOTED_VERSION_MAX]!r} "
        f"({len(version)} characters)"
    )
