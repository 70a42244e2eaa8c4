"""A session id the CLI prints is kept only if a later run could resume it, on a real store.

The id comes from the CLI's output, which Hearth does not trust: one with a NUL (PostgreSQL's
text cannot hold it) or of absurd length made the run's row write fail, and the run was lost.
Such an id is now not kept: the run completes, saying it has no session to resume.
"""

from __future__ import annotations

import json

import pytest

from hearth.runs.states import RunStatus
from hearth.store import Store
from tests.integration.run_lines import answer_lines, capture
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.test_run_pump_store import AgentExec, pump, running_run, told

CAPTURED_SESSION = "7954e2c1-2537-452c-b8b7-c03d16191ea7"  # in claude_code-answer.jsonl


def claude_answer_with_session(session_id: str) -> list[str]:
    """Claude's captured answer, every ``session_id`` in it replaced by ``session_id``."""
    chunks = []
    for line in answer_lines("claude_code"):
        event = json.loads(line)
        if event.get("session_id") == CAPTURED_SESSION:
            event["session_id"] = session_id
        chunks.append(json.dumps(event) + "\n")
    return chunks


@pytest.mark.parametrize(
    "session_id",
    [
        pytest.param("7954e2c1\x002537", id="nul"),
        pytest.param("a" * 100_000, id="absurd_length"),
        pytest.param("-rf", id="read_as_an_option"),
    ],
)
async def test_a_run_whose_cli_prints_an_unresumable_session_id_completes_without_one(
    store: Store, session_id: str
) -> None:
    run = await running_run(store)
    await (
        await pump(store, run.id, AgentExec(claude_answer_with_session(session_id)))
    ).run_to_end()
    ended = await store.runs.get(run.id)
    assert ended.status is RunStatus.COMPLETED, ended.error_message
    assert ended.session_id is None
    kind, data = (await told(store, run.id))[-1]
    assert kind == "run.completed"
    assert data["sessionId"] is None


async def test_a_run_keeps_the_session_id_the_cli_prints(store: Store) -> None:
    run = await running_run(store)
    await (await pump(store, run.id, AgentExec(claude_answer_with_session("s-1.a_B")))).run_to_end()
    ended = await store.runs.get(run.id)
    assert (ended.status, ended.session_id) == (RunStatus.COMPLETED, "s-1.a_B")
    assert (await told(store, run.id))[-1][1]["sessionId"] == "s-1.a_B"


async def test_a_failure_the_cli_words_with_control_characters_is_stored_without_them(
    store: Store,
) -> None:
    # The message is the CLI's own words: a NUL in them failed the run's row on PostgreSQL.
    chunks = []
    for line in capture("claude_code", "rate_limited").lines:
        event = json.loads(line)
        if event.get("type") == "result":
            event["result"] = "You've hit your\x00 5-hour\x07 limit\x1b[31m · resets 2am"
        chunks.append(json.dumps(event) + "\n")
    run = await running_run(store)
    await (await pump(store, run.id, AgentExec(chunks))).run_to_end()
    ended = await store.runs.get(run.id)
    assert (ended.status, ended.failure_code) == (RunStatus.FAILED, "rate_limited")
    assert ended.error_message is not None
    assert "You've hit your 5-hour limit · resets 2am" in ended.error_message
    kind, data = (await told(store, run.id))[-1]
    assert (kind, data["message"]) == ("run.failed", ended.error_message)
