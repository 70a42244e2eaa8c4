"""Each CLI's parser keeps from its output only a session id a later run could resume."""

from __future__ import annotations

import json

import pytest

from hearth.runs import RunEventType, parser_for
from hearth_agent.wire import Provider
from tests.integration.run_lines import answer_lines
from tests.unit.run_streams import end, feed

# Where each CLI's answer names its session, and the id it names in the captured answer.
SESSION_FIELDS = {
    Provider.CLAUDE_CODE: ("session_id", "7954e2c1-2537-452c-b8b7-c03d16191ea7"),
    Provider.CODEX: ("thread_id", "01a23e90-a28d-7860-92fc-df2546ad9a7a"),
    Provider.GEMINI_CLI: ("session_id", "c90ccd20-16d2-462d-90bc-089c5c122216"),
}
UNRESUMABLE = ["a\x00b", "a" * 201, "-rf", "a b", "a/../b"]


def answer_naming(provider: Provider, session_id: str) -> list[str]:
    """The CLI's captured answer, its session id replaced by ``session_id``."""
    field, captured = SESSION_FIELDS[provider]
    lines = []
    for line in answer_lines(provider.value):
        event = json.loads(line)
        if event.get(field) == captured:
            event[field] = session_id
        lines.append(json.dumps(event))
    return lines


@pytest.mark.parametrize("provider", list(SESSION_FIELDS))
@pytest.mark.parametrize("session_id", UNRESUMABLE)
def test_an_unresumable_session_id_is_not_kept_and_the_run_still_completes(
    provider: Provider, session_id: str
) -> None:
    parser = parser_for(provider)
    feed(parser, *answer_naming(provider, session_id))
    assert parser.session_id is None
    final = end(parser)
    assert (final.type, final.data["sessionId"]) == (RunEventType.COMPLETED, None)


@pytest.mark.parametrize("provider", list(SESSION_FIELDS))
def test_the_captured_session_id_is_kept(provider: Provider) -> None:
    parser = parser_for(provider)
    feed(parser, *answer_lines(provider.value))
    assert parser.session_id == SESSION_FIELDS[provider][1]
    assert end(parser).data["sessionId"] == SESSION_FIELDS[provider][1]


@pytest.mark.parametrize("session_id", UNRESUMABLE)
def test_a_checkpoint_naming_an_unresumable_session_restores_without_one(
    session_id: str,
) -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    feed(parser, *answer_lines("claude_code"))
    state = parser.checkpoint()
    state["sessionId"] = session_id
    restored = parser_for(Provider.CLAUDE_CODE)
    restored.restore(state)
    assert restored.session_id is None
