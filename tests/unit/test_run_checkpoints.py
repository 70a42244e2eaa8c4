"""A stream parser's checkpoint, and lines no parser can decode.

A restarted controller's pump restores the checkpoint the stopped one stored with its cursor
(``hearth.control.run_pump``): restored into a new parser after any line of a run, it must read
on, and end, exactly as the parser that read the whole run; it must hold what the parser holds,
not less (``vars`` equal). Every capture of the real CLIs is split after each of its lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hearth.runs import RunEvent, RunEventType, StreamParser, parser_for
from hearth_agent.wire import Provider
from tests.unit.run_streams import (
    SID,
    THREAD,
    c_assistant,
    c_delta,
    c_init,
    c_start,
    end,
    feed,
    text,
)

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "runs"
CLIS = [Provider.CLAUDE_CODE, Provider.CODEX, Provider.GEMINI_CLI]


def _captures() -> list[Any]:
    return [pytest.param(path, id=path.stem) for path in sorted(CAPTURES.glob("*.jsonl"))]


def restored(parser: StreamParser, provider: Provider) -> StreamParser:
    """A new parser of ``provider``'s CLI from ``parser``'s checkpoint, through JSON text."""
    again = parser_for(provider)
    again.restore(json.loads(json.dumps(parser.checkpoint())))
    return again


def assert_reads_on_alike(provider: Provider, lines: list[str], meta: dict[str, Any]) -> None:
    """Split after every line: the restored parser says what the whole one says, and ends so."""
    for cut in range(len(lines) + 1):
        whole = parser_for(provider)
        for line in lines[:cut]:
            whole.feed_line(line)
        again = restored(whole, provider)
        assert vars(again) == vars(whole), f"the checkpoint after line {cut} left state out"
        rest: list[RunEvent] = []
        for line in lines[cut:]:
            rest += whole.feed_line(line)
        assert [e for line in lines[cut:] for e in again.feed_line(line)] == rest, cut
        ending = {"exit_code": meta.get("exit_code"), "signal": None}
        tail = meta.get("stderr_tail") or ""
        assert again.finish(**ending, stderr_tail=tail) == whole.finish(**ending, stderr_tail=tail)


@pytest.mark.parametrize("path", _captures())
def test_a_checkpoint_after_any_line_of_a_captured_run_reads_on_as_the_whole_run(
    path: Path,
) -> None:
    meta = json.loads(path.with_suffix(".meta.json").read_text(encoding="utf-8"))
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert_reads_on_alike(Provider(meta["provider"]), lines, meta)


def test_claudes_streamed_text_is_not_said_again_after_a_checkpoint() -> None:
    # The deltas streamed before the checkpoint, the assistant line that repeats them after it.
    before = [c_init(), c_start("msg_1"), c_delta("Hello, "), c_delta("world")]
    assistant = {
        "type": "assistant",
        "message": {"id": "msg_1", "content": [{"type": "text", "text": "Hello, world."}]},
    }
    parser = parser_for(Provider.CLAUDE_CODE)
    said = text(feed(parser, *before))
    said += text(feed(restored(parser, Provider.CLAUDE_CODE), assistant))
    assert said == "Hello, world."


def test_claudes_checkpoint_stays_small_however_long_the_answer() -> None:
    # The pump stores the checkpoint with every exec event: one that grew with the answer made
    # the store writes of a long answer grow with its square (193 MB for 96 KB of text).
    word = "lorem ipsum dolor sit am"
    parser = parser_for(Provider.CLAUDE_CODE)
    feed(parser, c_init(), c_start("msg_1"), c_delta(word))
    first = len(json.dumps(parser.checkpoint()))
    feed(parser, *[c_delta(word) for _ in range(3999)])
    assert len(json.dumps(parser.checkpoint())) <= first + 4 < 1024  # digits of the length
    # It still tells what of the whole block the deltas said: all of it, and nothing of another.
    answer = word * 4000
    for whole, rest in ((answer + "!", "!"), ("Another " + answer, "Another " + answer)):
        again = restored(parser, Provider.CLAUDE_CODE)
        assistant = c_assistant("msg_1", {"type": "text", "text": whole})
        assert text(feed(again, assistant)) == rest


def test_a_claude_checkpoint_that_kept_the_streamed_text_still_restores() -> None:
    # What a controller before fingerprints stored: a controller upgraded mid-run reads on.
    stored: dict[str, Any] = {
        "sessionId": SID,
        "usage": None,
        "outcome": None,
        "lastError": None,
        "messageId": "msg_1",
        "streamed": {"msg_1": [[0, "Hello, world"], [1, ""]]},
        "accounted": {"msg_1": []},
        "tools": {},
        "refusal": None,
    }
    whole = parser_for(Provider.CLAUDE_CODE)
    feed(whole, c_init(), c_start("msg_1"), c_delta("Hello, "), c_delta("world"), c_delta("", 1))
    again = parser_for(Provider.CLAUDE_CODE)
    again.restore(json.loads(json.dumps(stored)))
    assert vars(again) == vars(whole)
    rest = [c_delta("!"), c_assistant("msg_1", {"type": "text", "text": "Hello, world!."})]
    assert text(feed(again, *rest)) == "!."  # the delta, then what the block adds


def test_codex_message_updates_pass_on_only_what_is_new_after_a_checkpoint() -> None:
    def item(kind: str, words: str) -> dict[str, Any]:
        return {"type": kind, "item": {"id": "item_0", "type": "agent_message", "text": words}}

    lines = [
        {"type": "thread.started", "thread_id": THREAD},
        item("item.started", "The answer"),
        item("item.updated", "The answer is"),
        item("item.completed", "The answer is 42."),
        item("item.updated", "Something else"),  # not a continuation: passed on as nothing
        {"type": "turn.completed", "usage": {"input_tokens": 5, "output_tokens": 3}},
    ]
    encoded = [json.dumps(line) for line in lines]
    assert_reads_on_alike(Provider.CODEX, encoded, {"exit_code": 0})
    parser = parser_for(Provider.CODEX)
    said = text(feed(parser, *encoded[:2]))
    again = restored(parser, Provider.CODEX)
    said += text(feed(again, *encoded[2:]))
    assert said == "The answer is 42."
    assert end(again).type is RunEventType.COMPLETED


@pytest.mark.parametrize("provider", CLIS)
def test_a_checkpoint_no_parser_gave_is_refused_as_bad_data(provider: Provider) -> None:
    parser = parser_for(provider)
    for bad in ({}, {"sessionId": None, "usage": None, "outcome": "yes", "lastError": None}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            parser.restore(bad)


@pytest.mark.parametrize(
    "line",
    [
        "[" * 30_000,  # deeper than the interpreter's recursion limit: json.loads raised
        '{"type": "result", "x": ' + "[" * 100 + "]" * 100 + "}",  # past the decoder's depth
    ],
    ids=["unclosed", "closed"],
)
@pytest.mark.parametrize("provider", CLIS)
def test_a_line_nested_too_deep_passes_on_as_raw(provider: Provider, line: str) -> None:
    parser = parser_for(provider)
    events = parser.feed_line(line)
    assert [e.type for e in events] == [RunEventType.RAW]
    assert events[0].data["line"].startswith(line[:100])
