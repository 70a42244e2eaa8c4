"""Which ended execs the registry forgets.

An ended exec is kept for its readers, within two bounds:

- **time**: once a reader has had its exit event (it is *collected*), it is kept
  ``keep_ended_s`` more seconds, for a reader that reconnects. One whose exit nobody has read
  yet is kept whatever its age: the controller that started it may be away (restarting, or
  down for an upgrade) and come back for how it ended, as a re-attached run does.
- **count**: at most ``keep_ended`` ended execs are kept, which bounds the memory their output
  holds. Past it, collected ones go first, then the oldest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Ended(Protocol):
    """What retention reads of an exec."""

    @property
    def ended_at(self) -> float | None: ...

    @property
    def collected(self) -> bool: ...


class Bounds(Protocol):
    """The retention limits (``ExecLimits``)."""

    @property
    def keep_ended_s(self) -> float: ...

    @property
    def keep_ended(self) -> int: ...


E = TypeVar("E", bound=Ended)


def expired(execs: Iterable[E], limits: Bounds, *, now: float) -> list[E]:
    """The ended execs among ``execs`` to forget at monotonic time ``now``."""
    gone: list[E] = []
    kept: list[E] = []
    for e in execs:
        if e.ended_at is None:
            continue
        stale = e.collected and now - e.ended_at > limits.keep_ended_s
        (gone if stale else kept).append(e)
    # Past the count: collected before uncollected, older before newer.
    kept.sort(key=lambda e: (not e.collected, e.ended_at or 0.0))
    return gone + kept[: max(0, len(kept) - limits.keep_ended)]
