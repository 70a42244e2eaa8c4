"""What every CLI's stream parser does alike: bad lines, crashes, secrets, one parser per run."""

from __future__ import annotations

import json

import pytest

from hearth.errors import InvalidInput
from hearth.runs import RunEventType, RunFailure, parser_for
from hearth_agent.wire import Provider
from tests.unit.run_streams import (
    G_STATS,
    THREAD,
    X_USAGE,
    c_delta,
    c_init,
    c_result,
    end,
    feed,
    g,
    g_answer,
    x_item,
)

ALL = [Provider.CLAUDE_CODE, Provider.CODEX, Provider.GEMINI_CLI]


@pytest.mark.parametrize("provider", ALL)
def test_garbage_lines_pass_on_raw_and_never_raise(provider: Provider) -> None:
    parser = parser_for(provider)
    events = feed(
        parser,
        "",
        "   ",
        "Warning: not json",
        '{"type":"assistant","message":{"id":"m","content":[{"type":"te',
        "[1, 2, 3]",
        "42",
        '{"type": "never-heard-of-it", "x": 1}',
        '{"type":"assistant","message":"oops"}',
        '{"type":"result","usage":[],"stats":"x","status":7}',
        '{"type":"item.completed","item":[]}',
        '{"type":"tool_result","tool_id":5}',
        '{"type":"stream_event","event":[1]}',
    )
    assert events[0].data == {"line": "Warning: not json"}
    assert events[1].data["line"].startswith('{"type":"assistant"')
    assert all(e.type in (RunEventType.RAW, RunEventType.TOOL_FINISHED) for e in events)
    assert end(parser, 1).type is RunEventType.FAILED


@pytest.mark.parametrize("provider", ALL)
def test_every_truncation_of_real_lines_is_survived(provider: Provider) -> None:
    lines = {
        Provider.CLAUDE_CODE: [c_init(), c_delta("Hello"), c_result()],
        Provider.CODEX: [x_item("completed", "i", "agent_message", text="Hi"),
                         {"type": "turn.completed", "usage": X_USAGE}],
        Provider.GEMINI_CLI: [*g_answer("Hi"), g("result", status="success", stats=G_STATS)],
    }[provider]  # fmt: skip
    for line in map(json.dumps, lines):
        for cut in range(len(line)):
            parser_for(provider).feed_line(line[:cut])


@pytest.mark.parametrize("provider", ALL)
def test_no_exit_and_no_output_is_a_crash(provider: Provider) -> None:
    final = end(parser_for(provider), 1)
    assert final.data["code"] == "cli_crashed"
    assert final.data["message"].endswith("exited with status 1 before it reported a result")


@pytest.mark.parametrize("provider", ALL)
def test_failure_messages_carry_no_tokens(provider: Provider) -> None:
    secrets = [
        "sk-ant-oat01-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlc2lnbmF0dXJl",
        "ya29.a0AfH6SMBx7Yq3Zk9Lm2Np4Qr",
        "1//0gLq8HJk2mN4pQ6rS8tU",
    ]
    stderr = (
        f"Error: 401 Unauthorized (Authorization: Bearer {secrets[0]})\n"
        f'refresh failed: {{"refresh_token": "{secrets[3]}", "id_token": "{secrets[1]}"}}\n'
        f"token={secrets[2]} https://oauth2.googleapis.com/token?code=abc&state=xyz failed\n"
    )
    final = end(parser_for(provider), 1, err=stderr)
    assert final.data["code"] == "not_logged_in"
    for secret in [*secrets, "code=abc", "state=xyz"]:
        assert secret not in final.data["message"]


def test_oidc_has_no_parser() -> None:
    with pytest.raises(InvalidInput):
        parser_for(Provider.OIDC)


def test_each_run_gets_a_fresh_parser() -> None:
    first, second = parser_for(Provider.CODEX), parser_for(Provider.CODEX)
    feed(first, {"type": "thread.started", "thread_id": THREAD})
    assert (first.session_id, second.session_id) == (THREAD, None)
    assert RunFailure.TIMEOUT.value == "timeout"
