"""A terminal page's input on its way to the shell: size changes (``Resize``) and keystrokes,
held in order within a budget while the shell does not take them (``hearth.control.terminals``
relays them)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from hearth.errors import InvalidInput
from hearth_agent.exec_pty import MAX_CELLS  # columns or rows: the agent's own limit

# Input coalesced into one write to the terminal, at most; a bigger frame (a paste) is split.
MAX_INPUT_CHUNK = 64 * 1024
# The page's input held while the shell does not take it, at most; then the page waits.
INPUT_QUEUE_BYTES = 1024 * 1024
# What each held piece costs beyond its bytes (a size change costs just this), so that a flood
# of one-byte frames or size changes is bounded by the same budget.
INPUT_ITEM_COST = 64


@dataclass(frozen=True)
class Resize:
    """A terminal size in character cells (the page's size, or a change of it)."""

    cols: int
    rows: int

    @classmethod
    def of(cls, message: Any) -> Resize:
        """``{"cols", "rows"}`` (other keys ignored) as a size; InvalidInput if out of range."""
        if not isinstance(message, dict):
            raise InvalidInput("a terminal size is an object with cols and rows")
        cells: dict[str, int] = {}
        for name in ("cols", "rows"):
            value = message.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CELLS:
                raise InvalidInput(f"{name} must be a whole number from 1 to {MAX_CELLS}")
            cells[name] = value
        return cls(**cells)


class InputQueue:
    """The page's input waiting for the terminal, in order, holding at most ``budget`` bytes
    (each piece costs ``INPUT_ITEM_COST`` more). A frame is split into pieces of at most
    ``MAX_INPUT_CHUNK``, and bytes typed one after the other join the last piece up to that
    size; a size change after a size change replaces it (only the last one matters)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._items: deque[bytearray | Resize] = deque()
        self._held = 0
        self._changed = asyncio.Condition()

    async def put(self, item: bytes | Resize) -> None:
        """Queue ``item``, waiting while there is no room for it (for each piece of a frame)."""
        if isinstance(item, Resize):
            await self._add(item)
            return
        for start in range(0, len(item), MAX_INPUT_CHUNK):
            await self._add(item[start : start + MAX_INPUT_CHUNK])

    async def take(self) -> bytes | Resize:
        """The next piece or size change, waiting for one."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item = self._items.popleft()
            self._held -= _cost(item)
            self._changed.notify_all()
        return bytes(item) if isinstance(item, bytearray) else item

    async def _add(self, item: bytes | Resize) -> None:
        async with self._changed:

            def room() -> bool:  # into an empty queue, so that no piece waits forever
                return not self._items or self._held + _cost(item) <= self._budget

            await self._changed.wait_for(room)
            last = self._items[-1] if self._items else None
            if isinstance(item, Resize):
                if isinstance(last, Resize):
                    self._held -= _cost(self._items.pop())
                self._items.append(item)
                self._held += _cost(item)
            elif isinstance(last, bytearray) and len(last) + len(item) <= MAX_INPUT_CHUNK:
                last += item
                self._held += len(item)
            else:
                self._items.append(bytearray(item))
                self._held += _cost(item)
            self._changed.notify_all()


def _cost(item: bytes | bytearray | Resize) -> int:
    return INPUT_ITEM_COST + (0 if isinstance(item, Resize) else len(item))
