"""``hearth.agent_answers``: what it takes of an agent's answers is what the API's wire models
take (so a checked answer never fails them), and its count of a listing's tokens stays linear
whatever the body."""

from __future__ import annotations

import secrets
import time
from typing import get_args

import pytest

from hearth.agent_answers import (
    ENTRY_TYPES,
    EXEC_ID,
    EXIT_REASONS,
    FILE_KINDS,
    FILE_LISTING,
    MAX_LISTING_TOKENS,
    checked,
    listing_json,
)
from hearth.agent_client import AgentClient, AgentError
from hearth.api.schemas_exec import ExecExit
from hearth.api.schemas_files import EntryType, FileWritten


def test_the_checked_values_are_those_the_wire_models_take() -> None:
    assert get_args(EntryType) == ENTRY_TYPES
    assert get_args(ExecExit.model_fields["reason"].annotation) == EXIT_REASONS
    assert get_args(FileWritten.model_fields["type"].annotation) == FILE_KINDS


def test_an_exec_id_the_agent_makes_is_taken() -> None:
    assert EXEC_ID.fullmatch(secrets.token_hex(12))
    assert not EXEC_ID.fullmatch("e1\r\nSet-Cookie: a=b")


def test_escaped_quotes_are_counted_in_linear_time() -> None:
    agent = AgentClient("http://127.0.0.1:9", None, vm_id="vm-1")  # never called
    started = time.monotonic()
    for unending in (b'"' + b'\\"' * 4_000_000, b'"\\' * 4_000_000):
        with pytest.raises(AgentError, match="a body that is not JSON"):
            listing_json(agent, unending)
    assert listing_json(agent, b'["' + b'\\"' * 4_000_000 + b'"]') == ['"' * 4_000_000]
    with pytest.raises(AgentError, match=f"more than {MAX_LISTING_TOKENS} JSON tokens"):
        listing_json(agent, b"[" + b'"a",' * 400_000 + b"1]")
    assert time.monotonic() - started < 5.0


NEVER_CALLED = AgentClient("http://127.0.0.1:9", None, vm_id="vm-1")


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("plain.txt", "plain.txt"),
        ("caf\udce9.txt", "caf\ufffd.txt"),  # b"caf\xe9.txt", as the agent escapes it
        ("\udcff\udcfe", "\ufffd\ufffd"),
        ("日本語", "日本語"),
    ],
)
def test_a_name_that_is_not_utf8_is_shown_with_replacement_characters(
    sent: str, shown: str
) -> None:
    entry = {"name": sent, "type": "file", "size": 1, "mode": "0644", "mtime": 0}
    listing = {"path": sent, "type": "dir", "entries": [entry], "truncated": False}
    kept = checked(
        AgentClient("http://127.0.0.1:9", None, vm_id="vm-1"),
        "GET /files/list",
        FILE_LISTING,
        listing,
    )
    assert (kept["path"], kept["entries"][0]["name"]) == (shown, shown)


def test_a_surrogate_no_byte_escapes_to_is_the_agents_error() -> None:
    entry = {"name": "\ud800", "type": "file", "size": 1, "mode": "0644", "mtime": 0}
    listing = {"path": "x", "type": "dir", "entries": [entry], "truncated": False}
    with pytest.raises(AgentError, match="not a file's name"):
        checked(
            AgentClient("http://127.0.0.1:9", None, vm_id="vm-1"),
            "GET /files/list",
            FILE_LISTING,
            listing,
        )
