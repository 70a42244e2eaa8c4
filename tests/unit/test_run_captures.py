"""Whole runs the real CLIs streamed, replayed through their parsers.

``tests/data/runs/<provider>-<case>.jsonl`` is what a pinned vendor CLI wrote on stdout, run
headless against a loopback stand-in of its provider's API (``tests/standins``); the
``.meta.json`` beside it holds its exit status, the signal sent, and its stderr's tail. Each case
ends the way its name says; a case this file does not know is still read without error to one
terminal event.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hearth.bench.standins.scenarios import Script
from hearth.runs import RunEvent, RunEventType, RunFailure, parser_for
from hearth_agent.wire import Provider

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "runs"
ANSWERED = {"answer", "resumed", "dropped_then_answer", "tool_call"}
FAILS_WITH = {
    "unauthorized": RunFailure.NOT_LOGGED_IN,
    "rate_limited": RunFailure.RATE_LIMITED,
    "dropped": RunFailure.PROVIDER_UNREACHABLE,
}
_SECRET_LIKE = re.compile(r"eyJ[\w-]{8,}\.|\bsk-(?!proj-\*)[\w-]{8,}|\bya29\.|\b1//[\w-]{8}")


@dataclass(frozen=True)
class Replay:
    """One capture, read through a fresh parser."""

    provider: Provider
    case: str
    meta: dict[str, Any]
    events: list[RunEvent]
    final: RunEvent
    session_id: str | None
    said_session_id: str | None  # the id the stream itself named first

    def of_type(self, kind: RunEventType) -> list[dict[str, Any]]:
        """The data of the events of one type, in order."""
        return [e.data for e in self.events if e.type is kind]

    @property
    def text(self) -> str:
        """The assistant text the run said."""
        return "".join(d["text"] for d in self.of_type(RunEventType.MESSAGE_DELTA))


def _captures() -> list[Path]:
    return sorted(CAPTURES.glob("*.jsonl")) if CAPTURES.is_dir() else []


def _replay(path: Path) -> Replay:
    meta = json.loads(path.with_suffix(".meta.json").read_text(encoding="utf-8"))
    provider = Provider(meta["provider"])
    parser = parser_for(provider)
    events: list[RunEvent] = []
    said_session_id = None
    for line in path.read_text(encoding="utf-8").splitlines():
        events += parser.feed_line(line)
        if said_session_id is None:
            obj = json.loads(line) if line.startswith("{") else {}
            said_session_id = obj.get("session_id") or obj.get("thread_id")
    sent = meta.get("signal_sent")
    # A signal sent to the group shows as the CLI's own exit status when the CLI handles it.
    killed = meta.get("exit_code") is None and sent
    final = parser.finish(
        exit_code=meta.get("exit_code"),
        signal=int(signal.Signals[sent]) if killed else None,
        stderr_tail=meta.get("stderr_tail") or "",
    )
    return Replay(provider, meta["case"], meta, events, final, parser.session_id, said_session_id)


def _cases(*names: str) -> list[Any]:
    """The captures of these cases (all when none is named), as test parameters."""
    paths = [p for p in _captures() if not names or p.stem.split("-", 1)[1] in names]
    if not paths:
        reason = f"no captures of {', '.join(names) or 'any case'} in {CAPTURES}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(path, id=path.stem) for path in paths]


CASES = _cases()


@pytest.mark.parametrize("path", CASES)
def test_capture_reads_to_one_terminal_event(path: Path) -> None:
    replay = _replay(path)
    assert replay.final.type in (RunEventType.COMPLETED, RunEventType.FAILED)
    assert all(e.type not in (RunEventType.COMPLETED, RunEventType.FAILED) for e in replay.events)
    assert replay.session_id == replay.said_session_id
    if replay.final.type is RunEventType.FAILED:
        assert replay.final.data["code"] in {f.value for f in RunFailure}
        assert not _SECRET_LIKE.search(replay.final.data["message"])


@pytest.mark.parametrize("path", _cases(*ANSWERED))
def test_captured_answers_stream_in_order_and_complete_with_usage(path: Path) -> None:
    replay = _replay(path)
    script = Script()
    expected = script.tool_text if replay.case == "tool_call" else script.text
    assert replay.final.type is RunEventType.COMPLETED, replay.final.data
    # A stream the CLI retried may have said its beginning twice; the answer ends it whole.
    assert replay.text.endswith(expected)
    if replay.case in ("answer", "resumed", "tool_call"):
        assert replay.text == expected
    usage = replay.final.data["usage"]
    assert usage["inputTokens"] > 0
    assert usage["outputTokens"] > 0
    assert replay.final.data["sessionId"] == replay.session_id
    assert replay.of_type(RunEventType.USAGE)[-1] == usage


@pytest.mark.parametrize("path", _cases("tool_call"))
def test_captured_tool_calls_start_before_they_finish(path: Path) -> None:
    replay = _replay(path)
    started = replay.of_type(RunEventType.TOOL_STARTED)
    finished = replay.of_type(RunEventType.TOOL_FINISHED)
    assert [s["toolId"] for s in started] == [f["toolId"] for f in finished]
    assert all(s["name"] for s in started)
    assert all(f["isError"] is False for f in finished)
    kinds = [e.type for e in replay.events]
    assert kinds.index(RunEventType.TOOL_FINISHED) < kinds.index(RunEventType.MESSAGE_DELTA)


@pytest.mark.parametrize("path", _cases(*FAILS_WITH, "cancelled"))
def test_captured_failures_have_their_code(path: Path) -> None:
    replay = _replay(path)
    assert replay.final.type is RunEventType.FAILED
    if replay.case == "cancelled":
        # The service says "cancelled" for a run it cancelled; claude says so itself.
        if replay.provider is Provider.CLAUDE_CODE:
            assert replay.final.data["code"] == RunFailure.CANCELLED
        return
    assert replay.final.data["code"] == FAILS_WITH[replay.case], replay.final.data
    assert replay.final.data["message"]


@pytest.mark.parametrize("path", CASES)
def test_captured_prompt_is_not_said_back(path: Path) -> None:
    replay = _replay(path)
    argv = replay.meta.get("argv", [])
    prompt = argv[argv.index("-p") + 1] if "-p" in argv[:-1] else "Say hello"
    assert prompt not in [d["text"] for d in replay.of_type(RunEventType.MESSAGE_DELTA)]
