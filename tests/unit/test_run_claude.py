"""Claude Code's stream-json read into run events: deltas once, tools, usage, failures."""

from __future__ import annotations

from typing import Any

import pytest

from hearth.runs import RunEventType, parser_for
from hearth.runs.events import TOOL_OUTPUT_MAX_CHARS
from hearth_agent.wire import Provider
from tests.unit.run_streams import (
    SID,
    c_assistant,
    c_delta,
    c_init,
    c_refusal,
    c_result,
    c_retry,
    c_se,
    c_start,
    end,
    feed,
    of_type,
    text,
)


def test_claude_streams_each_delta_once_and_completes_with_normalised_usage() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    events = feed(
        parser,
        c_init(),
        c_start("msg_a"),
        c_se({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        c_delta("Hel"),
        c_delta("lo, "),
        c_delta("world."),
        c_assistant("msg_a", {"type": "text", "text": "Hello, world."}),
        c_se({"type": "content_block_stop", "index": 0}),
        c_se({"type": "message_stop"}),
        c_result(),
    )
    assert [e.data["text"] for e in events if e.type is RunEventType.MESSAGE_DELTA] == [
        "Hel",
        "lo, ",
        "world.",
    ]
    usage = {"inputTokens": 19, "outputTokens": 7, "cachedInputTokens": 4, "totalTokens": 26,
             "cacheWriteInputTokens": 3}  # fmt: skip
    assert of_type(events, RunEventType.USAGE) == [usage]
    assert parser.session_id == SID
    final = end(parser)
    assert (final.type, final.data) == (RunEventType.COMPLETED, {"usage": usage, "sessionId": SID})


def test_claude_session_id_is_known_from_the_first_line() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    assert feed(parser, c_init()) == []
    assert parser.session_id == SID


def test_claude_text_that_never_streamed_is_passed_on_whole() -> None:
    # After a stream broke off, claude may fall back to a request without streaming.
    parser = parser_for(Provider.CLAUDE_CODE)
    events = feed(parser, c_assistant("msg_x", {"type": "text", "text": "title"}), c_result())
    assert text(events) == "title"


def test_claude_adds_only_what_the_deltas_of_a_block_did_not_say() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    events = feed(
        parser,
        c_start("m1"),
        c_delta("Hel"),
        c_assistant("m1", {"type": "text", "text": "Hello"}),
        c_delta("Second", index=2),
        c_assistant("m1", {"type": "text", "text": "Second block"}),
    )
    assert text(events) == "HelloSecond block"


def test_claude_retry_restreams_and_the_abandoned_stop_is_passed_on_raw() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    abandoned = c_se({"type": "message_stop"}, abandoned_blocks={"from_block_index": 0})
    events = feed(
        parser,
        c_start("m1"),
        c_delta("Hel"),
        abandoned,
        c_retry(None, "unknown"),
        c_start("m1"),
        c_delta("Hello"),
        c_assistant("m1", {"type": "text", "text": "Hello"}),
        c_result(),
    )
    assert text(events) == "HelHello"
    raws = of_type(events, RunEventType.RAW)
    assert raws[0]["event"]["abandoned_blocks"] == {"from_block_index": 0}
    assert raws[1]["event"]["subtype"] == "api_retry"
    assert end(parser).type is RunEventType.COMPLETED


def test_claude_tool_call_starts_with_its_whole_input_and_finishes_with_its_output() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    tool = {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {}}
    events = feed(
        parser,
        c_start("msg_t1"),
        c_se({"type": "content_block_start", "index": 1, "content_block": tool}),
        c_se({"type": "content_block_delta", "index": 1,
              "delta": {"type": "input_json_delta", "partial_json": "{\"command\": \"echo"}}),
        c_assistant("msg_t1", {**tool, "input": {"command": "echo hi-there"}}),
        {"type": "user", "message": {"role": "user", "content": [
            {"tool_use_id": "toolu_01", "type": "tool_result", "content": "hi-there",
             "is_error": False}]}, "parent_tool_use_id": None},
        {"type": "user", "message": {"role": "user", "content": [
            {"tool_use_id": "toolu_02", "type": "tool_result", "is_error": True,
             "content": [{"type": "text", "text": "denied"}, {"type": "image"}]}]}},
    )  # fmt: skip
    assert of_type(events, RunEventType.TOOL_STARTED) == [
        {"toolId": "toolu_01", "name": "Bash", "input": {"command": "echo hi-there"}}
    ]
    assert of_type(events, RunEventType.TOOL_FINISHED) == [
        {"toolId": "toolu_01", "name": "Bash", "isError": False, "output": "hi-there"},
        {"toolId": "toolu_02", "name": "", "isError": True, "output": "denied\n[image]"},
    ]
    assert of_type(events, RunEventType.RAW) == []


def test_claude_tool_output_is_capped() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    big = "x" * (TOOL_OUTPUT_MAX_CHARS + 10)
    result = {"tool_use_id": "t", "type": "tool_result", "content": big}
    [event] = feed(parser, {"type": "user", "message": {"content": [result]}})
    assert event.data["output"].endswith("… (10 more characters)")


def test_claude_thinking_and_subagent_text_are_not_the_answer() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    thinking = {"type": "thinking_delta", "thinking": "hmm"}
    sub = c_assistant("m2", {"type": "text", "text": "subagent says"})
    sub["parent_tool_use_id"] = "toolu_task"
    events = feed(
        parser,
        c_se({"type": "content_block_delta", "index": 0, "delta": thinking}),
        c_assistant("m1", {"type": "thinking", "thinking": "hmm"}),
        sub,
        c_delta("sub delta", index=0) | {"parent_tool_use_id": "toolu_task"},
    )
    assert text(events) == ""
    assert len(of_type(events, RunEventType.RAW)) == 3  # all three are passed on, as raw


def test_claude_unauthorized_fails_not_logged_in_and_its_notice_is_not_text() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    said = "Invalid API key · Fix external API key"
    events = feed(
        parser,
        c_init(),
        c_retry(401, "authentication_failed"),
        c_refusal(said, "authentication_failed", 401),
        c_result(False, result=said, api_error_status=401, terminal_reason="api_error"),
    )
    assert text(events) == ""
    final = end(parser, 1)
    assert final.data == {"code": "not_logged_in", "message": said}


@pytest.mark.parametrize(
    ("said", "error", "result", "code"),
    [
        ("Not logged in · Please run /login", "authentication_failed", {}, "not_logged_in"),
        ("You've hit your 5-hour limit · resets 1:53am (UTC)", "rate_limit",
         {"api_error_status": 429, "api_error": "usage_limit_reached"}, "rate_limited"),
        ("API Error: Request rejected (429) · This request would exceed your rate limit.",
         "rate_limit", {"api_error_status": 429}, "rate_limited"),
        ("API Error: 529 Overloaded. This is a server-side issue", "server_error",
         {"api_error_status": 529}, "provider_unreachable"),
        ("API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)",
         "unknown", {}, "provider_unreachable"),
        ("API Error: Connection to the API was lost (ECONNRESET).", "server_error",
         {"api_error": "connection_failed"}, "provider_unreachable"),
        ("API Error: Invalid URL", "unknown", {}, "cli_crashed"),
    ],
)  # fmt: skip
def test_claude_api_errors_map_to_failures(
    said: str, error: str, result: dict[str, Any], code: str
) -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    feed(parser, c_refusal(said, error), c_result(False, result=said, **result))
    final = end(parser, 1)
    assert final.data["code"] == code
    assert said in final.data["message"]


def test_claude_resume_of_an_unknown_session_fails_saying_so() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    missing = "No conversation found with session ID: 00000000-0000-4000-8000-000000000000"
    result = c_result(False, subtype="error_during_execution", errors=[missing])
    feed(parser, result)
    assert end(parser, 1, err=missing).data == {
        "code": "cli_crashed",
        "message": f"claude exited with status 1: {missing}",
    }


def test_claude_interrupted_run_is_cancelled() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    result = c_result(False, subtype="error_during_execution", terminal_reason="aborted_streaming",
                      errors=["[ede_diagnostic] result_type=user"])  # fmt: skip
    feed(parser, c_start("m"), c_delta("Hello "), result)
    assert end(parser, 0).data["code"] == "cancelled"


def test_claude_killed_while_retrying_fails_with_the_retried_error() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    feed(parser, c_init(), c_retry(429, "rate_limit"), c_retry(429, "rate_limit"))
    final = end(parser, None, 9)
    assert final.data["code"] == "rate_limited"
    assert "status 429" in final.data["message"]


def test_claude_killed_without_a_cause_crashed() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    feed(parser, c_init(), c_start("m"), c_delta("Hi"))
    assert end(parser, None, 9).data == {
        "code": "cli_crashed",
        "message": "claude was killed by signal 9 (SIGKILL) before it reported a result",
    }


def test_claude_answer_then_a_failed_exit_is_not_completed() -> None:
    parser = parser_for(Provider.CLAUDE_CODE)
    feed(parser, c_result())
    final = end(parser, 3)
    assert final.data == {
        "code": "cli_crashed",
        "message": "claude exited with status 3 after it had answered",
    }
