"""What a stream parser remembers of earlier lines, bounded whatever the CLI prints.

The pump stores a parser's checkpoint with every exec event (``hearth.control.run_pump``), and
the lines come from the guest: a parser that kept every id it read, at any length, made its
memory and the store's writes grow with the square of a long run (gigabytes for a hostile
output). So a parser keeps only what later lines still need, each kind of it bounded:

- an id or tool name past ``MAX_ID_CHARS`` is no CLI's: its line is malformed, and passes on
  as ``raw`` as any line of a shape the parser does not expect (``id_of``);
- tool calls without a result are kept (their names, for the result's event), at most
  ``MAX_OPEN_TOOLS``: the oldest give way, a call whose result never came;
- of the tool calls that have a result, and of messages, only the latest (``RECENT_TOOLS``,
  ``RECENT_MESSAGES``): a CLI repeats a line of one soon after it, not turns later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

# Real ids are tens of characters: claude's ``toolu_…`` and ``msg_…``, codex's ``item_…``,
# gemini's ``<tool name>-<ms>-<random>``; tool names (MCP's ``server__tool``) as short.
MAX_ID_CHARS = 256
MAX_OPEN_TOOLS = 128
RECENT_TOOLS = 32
RECENT_MESSAGES = 16

K = TypeVar("K")
V = TypeVar("V")


def id_of(value: object) -> str:
    """An id (or name) field's value, "" for anything but a string; ValueError for one past
    ``MAX_ID_CHARS``, which makes its line ``raw`` (``CliStream.feed_line``)."""
    text = value if isinstance(value, str) else ""
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"an id of {len(text)} characters (at most {MAX_ID_CHARS})")
    return text


def remember(entries: dict[K, V], key: K, value: V, *, limit: int) -> None:
    """Set ``entries[key]`` as the newest entry; the oldest give way past ``limit``."""
    entries.pop(key, None)
    entries[key] = value
    while len(entries) > limit:
        del entries[next(iter(entries))]


def newest(entries: Iterable[tuple[K, V]], *, limit: int) -> dict[K, V]:
    """The last ``limit`` of ``entries`` (in order), as ``remember`` would have kept them."""
    kept: dict[K, V] = {}
    for key, value in entries:
        remember(kept, key, value, limit=limit)
    return kept


@dataclass
class ToolCalls:
    """The tool calls a parser has seen start, by id: those without a result yet (``open``) and
    the latest with one (``done``), each with its name, oldest first."""

    open: dict[str, str] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)

    def __contains__(self, tool_id: str) -> bool:
        return tool_id in self.open or tool_id in self.done

    def name(self, tool_id: str) -> str:
        """The name the call ``tool_id`` started with ("" for a call not remembered)."""
        if tool_id in self.open:
            return self.open[tool_id]
        return self.done.get(tool_id, "")

    def started(self, tool_id: str, name: str) -> None:
        """The call ``tool_id`` started (again) as ``name``."""
        self.done.pop(tool_id, None)
        remember(self.open, tool_id, name, limit=MAX_OPEN_TOOLS)

    def finished(self, tool_id: str) -> str:
        """The call ``tool_id`` has its result: its name, as ``name`` gives it."""
        if tool_id in self.open:
            remember(self.done, tool_id, self.open.pop(tool_id), limit=RECENT_TOOLS)
        return self.name(tool_id)

    def data(self) -> dict[str, dict[str, str]]:
        """As JSON data (``of`` reads it back)."""
        return {"tools": dict(self.open), "done": dict(self.done)}

    @classmethod
    def of(cls, state: Mapping[str, object]) -> ToolCalls:
        """The calls ``data`` gave; from the checkpoint of an older controller (``tools`` only,
        all of them, however many) the newest are kept. TypeError for data it cannot give."""
        return cls(
            open=newest(_names(state["tools"]), limit=MAX_OPEN_TOOLS),
            done=newest(_names(state.get("done", {})), limit=RECENT_TOOLS),
        )


def _names(value: object) -> Iterable[tuple[str, str]]:
    if not isinstance(value, dict):
        raise TypeError("tool calls are an object of names by id")
    return ((str(tool_id), str(name)) for tool_id, name in value.items())
