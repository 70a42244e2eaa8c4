"""A VM's agent's answers about commands and files, checked before anyone reads them, and
what its refusals of them mean.

Whatever answers on the agent's port is the VM root's choice. An answer of the wrong shape (a
field missing or of another type, an exec id that is no short token, a listing of more entries
than the agent ever lists, a download that is neither a file nor a directory) is the agent's
error: ``AgentError`` naming the VM and what was wrong (502 ``agent_error``), never a
``KeyError``, ``ValueError`` or ``ValidationError`` that ends the route that asked in a 500.
Only the fields the API's wire models know are kept, so a newer agent's extra field is not
refused by them (they take nothing unknown). Guest text quoted in an error is cut
(``guest_text``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from hearth.errors import (
    Conflict,
    FileTooLarge,
    HearthError,
    InsufficientStorage,
    InvalidArchive,
    InvalidInput,
    PathConflict,
    PathNotFound,
    PathOutsideWorkspace,
    TooManyRunning,
)
from hearth.runs.events import capped
from hearth.store.models import ID_MAX
from hearth_agent.exec_pty import MAX_CELLS
from hearth_agent.files import MAX_LISTED

if TYPE_CHECKING:
    from hearth.agent_client import AgentClient, AgentError

# What of a guest's text (an agent's error message, a reason) a message quotes: as much as the
# store keeps of an error message.
GUEST_TEXT_CHARS = 2000
# The agent names a command by ``secrets.token_hex(12)``; the store keeps it in ``ID_MAX``.
EXEC_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{ID_MAX}}}")
# A directory's listing: up to 10,000 entries (``MAX_LISTED``), each a name of up to 255 bytes
# (each \udcXX once in JSON, 6x: 1,530) and ~110 of other fields (a 19-digit size, a float's
# 23-digit mtime): 16.4 MB at most, with a little margin. Symlinks' targets (up to 4,095 bytes)
# share it: 10,000 long ones at once would not fit, and are refused.
MAX_LISTING_BYTES = 18 << 20
# The tokens a listing may hold (strings, and the commas, colons and opening brackets outside
# them), counted before it is parsed, and only up to one past this: a body of many tiny values
# ([] or {}) costs ~20x its bytes once parsed. A real entry has at most 23 (6 keys, 4 string
# values, 6 colons, 6 commas, a brace); 32 leaves room for a newer agent's fields.
MAX_LISTING_TOKENS = 32 * (MAX_LISTED + 1)
# JSON's lexemes, from the start on, each matched where the last ended: a token (a string or one
# of ,:[{), or a run of anything else, or the quote of a string that never ends (no JSON).
# Possessive: a long string is matched in constant memory (a backtracking one keeps its steps).
_LEXEME = re.compile(rb'("[^"\\]*+(?:\\.[^"\\]*+)*+"|[,:\[{])|[^",:\[{]+|(")', re.DOTALL)
# What an agent's refusal of a client's own request (an exec's body, its stdin) becomes.
CLIENT_ERRORS: dict[int, type[HearthError]] = {
    400: InvalidInput,
    409: Conflict,
    422: InvalidInput,
    429: TooManyRunning,
}
FILE_KINDS = ("file", "dir")
# What the agent's refusals of a file request mean, by its code (its message kept).
FILE_ERRORS: dict[str, type[HearthError]] = {
    "path_outside_workspace": PathOutsideWorkspace,
    "invalid_archive": InvalidArchive,
    "path_not_found": PathNotFound,
    "path_conflict": PathConflict,
    "file_too_large": FileTooLarge,
    "body_too_large": FileTooLarge,
    "disk_full": InsufficientStorage,
}
ENTRY_TYPES = ("file", "dir", "symlink", "other")
EXIT_REASONS = ("exited", "timeout", "killed")


class Malformed(ValueError):
    """What is wrong with an answer, by the field's name (no guest text)."""


# A field's check: the value as kept, or Malformed naming what it is not.
Check = Callable[[object], object]
# An object's check: the fields kept, or Malformed naming the first that is wrong.
Shape = Callable[[object], dict[str, Any]]


def guest_text(text: object, limit: int = GUEST_TEXT_CHARS) -> str:
    """``text`` (a guest's words) as a message may quote it: at most ``limit`` characters, a
    longer one cut and saying how much was left out."""
    return capped(str(text), limit)


def _typed(test: Callable[[object], bool], what: str) -> Check:
    def check(value: object) -> object:
        if not test(value):
            raise Malformed(what)
        return value

    return check


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # json.loads takes NaN
    return _is_integer(value)


_STR = _typed(lambda v: isinstance(v, str), "not a string")


def _name(value: object) -> str:
    """A file's name or path as JSON answers may carry it: the agent sends a name that is not
    UTF-8 with its bytes escaped (lone surrogates, which no JSON answer can hold), shown here
    with U+FFFD for each such byte."""
    text = _STR(value)
    assert isinstance(text, str)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte escapes to: no name of a file
        raise Malformed("not a file's name") from None
    return raw.decode("utf-8", "replace")


_INT = _typed(_is_integer, "not an integer")
_NUMBER = _typed(_is_number, "not a finite number")
_BOOL = _typed(lambda v: isinstance(v, bool), "not true or false")
_EXEC_ID = _typed(
    lambda v: isinstance(v, str) and EXEC_ID.fullmatch(v) is not None,
    f"not an id of 1 to {ID_MAX} letters, digits, '-' or '_'",
)
_CELLS = _typed(lambda v: _is_integer(v) and 1 <= v <= MAX_CELLS, "no terminal size")


def _one_of(values: tuple[str, ...]) -> Check:
    return _typed(lambda v: v in values, f"not one of {', '.join(values)}")


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _list_of(check: Check, most: int) -> Check:
    def checked(value: object) -> object:
        if not isinstance(value, list):
            raise Malformed("not a list")
        if len(value) > most:
            raise Malformed(f"more than {most} items")
        return [check(item) for item in value]

    return checked


def _object(fields: Mapping[str, Check]) -> Shape:
    """An object with ``fields`` (one absent counts as null), each checked; the rest dropped."""

    def checked(value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Malformed("not an object")
        kept = {}
        for name, check in fields.items():
            try:
                kept[name] = check(value.get(name))
            except Malformed as exc:
                raise Malformed(f"{name!r}: {exc}") from None
        return kept

    return checked


_EXIT = _object(
    {
        "code": _optional(_INT),
        "signal": _optional(_STR),
        "duration_ms": _INT,
        "reason": _one_of(EXIT_REASONS),
    }
)
EXEC_STARTED = _object({"exec_id": _EXEC_ID, "pid": _INT})
EXEC_STATE = _object(
    {
        "exec_id": _EXEC_ID,
        "pid": _INT,
        "cmd": _list_of(_STR, 1 << 16),
        "status": _STR,
        "started_at": _NUMBER,
        "timeout_s": _NUMBER,
        "last_event_id": _INT,
        "exit": _optional(_EXIT),
        "pty": _optional(_object({"cols": _CELLS, "rows": _CELLS})),
    }
)
EXEC_RESIZED = _object({"exec_id": _EXEC_ID, "pty": _object({"cols": _CELLS, "rows": _CELLS})})
EXEC_SIGNALLED = _object({"exec_id": _EXEC_ID, "signalled": _BOOL, "status": _STR})
EXEC_STDIN_QUEUED = _object({"exec_id": _EXEC_ID, "queued_bytes": _INT})
FILE_WRITTEN = _object(
    {
        "path": _name,
        "type": _one_of(FILE_KINDS),
        "size": _INT,
        "sha256": _optional(_STR),
        "mode": _optional(_STR),
        "entries": _optional(_INT),
    }
)
_ENTRY = _object(
    {
        "name": _name,
        "type": _one_of(ENTRY_TYPES),
        "size": _INT,
        "mode": _STR,
        "mtime": _NUMBER,
        "target": _optional(_name),
    }
)
FILE_LISTING = _object(
    {
        "path": _name,
        "type": _one_of(ENTRY_TYPES),
        "entries": _list_of(_ENTRY, MAX_LISTED),
        "truncated": _BOOL,
    }
)
FILE_REMOVED = _object({"path": _name, "type": _one_of(ENTRY_TYPES), "removed": _BOOL})


def checked(agent: AgentClient, request: str, shape: Shape, answer: object) -> dict[str, Any]:
    """``answer`` to ``request`` as ``shape`` keeps it; AgentError saying what is wrong."""
    try:
        return shape(answer)
    except Malformed as exc:
        raise _unexpected(agent, request, f"a malformed answer ({exc})") from None


def same_exec(
    agent: AgentClient, request: str, exec_id: str, answer: dict[str, Any]
) -> dict[str, Any]:
    """``answer`` to ``request`` if it is about exec ``exec_id``, the one asked about;
    AgentError otherwise."""
    if answer["exec_id"] != exec_id:
        raise _unexpected(agent, request, "the state of another command")
    return answer


def file_kind(agent: AgentClient, kind: str) -> str:
    """The download's kind (``X-Hearth-File-Type``): ``file`` or ``dir``; AgentError else."""
    if kind not in FILE_KINDS:
        raise _unexpected(agent, "GET /files", f"a file type {guest_text(kind, 40)!r}")
    return kind


def listing_json(agent: AgentClient, body: bytes) -> object:
    """The parsed listing in ``body``; AgentError, unparsed, when it holds more tokens than
    ``MAX_LISTING_TOKENS``, or is no JSON."""
    if _tokens_past(body, MAX_LISTING_TOKENS):
        what = f"more than {MAX_LISTING_TOKENS} JSON tokens ({MAX_LISTED} entries at most)"
        raise _unexpected(agent, "GET /files/list", what)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _unexpected(agent, "GET /files/list", "a body that is not JSON") from None


def _tokens_past(body: bytes, most: int) -> bool:
    """Whether ``body`` holds more than ``most`` JSON tokens, counted no further than that. The
    lexemes follow each other, so a string is only ever looked for where one may start: an
    escaped quote never starts one (a search from each quote would take quadratic time)."""
    counted = 0
    for lexeme in _LEXEME.finditer(body):
        if lexeme.lastindex == 1:
            counted += 1
            if counted > most:
                return True
        elif lexeme.lastindex == 2:  # a string without end: json.loads refuses it
            return False
    return False


def _unexpected(agent: AgentClient, request: str, what: str) -> AgentError:
    return agent.error(f"{agent.name} answered {request} with {what}")
