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
    c_start,
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


# Numbers a JSON line may hold but no count means: past a double (decodes to infinity), past the
# interpreter's 4300-digit limit for int conversion, and counts whose sum passes that limit.
_HUGE = "9" * 4300
_NUMBER_LINES = {
    Provider.CLAUDE_CODE: {
        "infinite count": ['{"type":"result","subtype":"success","usage":{"input_tokens":1e999}}'],
        "infinite index": [
            json.dumps(c_start("msg_1")),
            '{"type":"stream_event","event":{"type":"content_block_delta","index":-1e999,'
            '"delta":{"type":"text_delta","text":"x"}}}',
        ],
        "infinite in a raw event": ['{"type":"rate_limit_event","n":1e999}'],
        "5000 digits": ['{"type":"system","subtype":"x","n":' + "9" * 5000 + "}"],
        "sum past 4300 digits": [
            '{"type":"result","subtype":"success","usage":{"input_tokens":H,'
            '"cache_read_input_tokens":H,"cache_creation_input_tokens":H}}'.replace("H", _HUGE)
        ],
    },
    Provider.CODEX: {
        "infinite count": ['{"type":"turn.completed","usage":{"input_tokens":1e999}}'],
        "infinite in a raw event": ['{"type":"error","message":"m","n":1e999}'],
        "5000 digits": ['{"type":"thread.started","thread_id":"t","n":' + "9" * 5000 + "}"],
        "sum past 4300 digits": [
            '{"type":"turn.completed","usage":{"input_tokens":H,"output_tokens":H}}'.replace(
                "H", _HUGE
            )
        ],
    },
    Provider.GEMINI_CLI: {
        "infinite count": ['{"type":"result","status":"success","stats":{"input_tokens":1e999}}'],
        "infinite in a raw event": ['{"type":"never-heard-of-it","n":-1e999}'],
        "5000 digits": ['{"type":"init","session_id":"s","n":' + "9" * 5000 + "}"],
        "sum past 4300 digits": [
            '{"type":"result","status":"success","stats":{"input_tokens":H,"output_tokens":H}}'.replace(
                "H", _HUGE
            )
        ],
    },
}


def _strict_json(value: object) -> str:
    return json.dumps(value, allow_nan=False)


@pytest.mark.parametrize(
    ("provider", "lines"),
    [
        pytest.param(provider, lines, id=f"{provider.value}-{name}")
        for provider, cases in _NUMBER_LINES.items()
        for name, lines in cases.items()
    ],
)
def test_numbers_no_count_can_mean_neither_raise_nor_reach_what_is_stored(
    provider: Provider, lines: list[str]
) -> None:
    # The pump stores each event's data, the usage and the checkpoint as JSON text: all of it
    # must encode, strictly (no Infinity), whatever numbers a line held.
    parser = parser_for(provider)
    for line in lines:
        for event in parser.feed_line(line):
            _strict_json(event.data)
    _strict_json(parser.checkpoint())
    _strict_json(end(parser).data)
    assert all(count < 2**63 for count in (parser.usage or {}).values())
