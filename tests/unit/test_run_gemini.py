"""Gemini CLI's stream-json read into run events: deltas, tools, usage, failures from stderr."""

from __future__ import annotations

import pytest

from hearth.runs import RunEventType, parser_for
from hearth_agent.wire import Provider
from tests.unit.run_streams import G_STATS, SID, end, feed, g, g_answer, of_type, text


def test_gemini_answer_streams_without_the_echoed_prompt_and_completes() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    events = feed(
        parser,
        g("init", session_id=SID, model="auto"),
        g("message", role="user", content="say hello\n"),
        *g_answer("Hel", "lo, ", "world."),
        g("result", status="success", stats=G_STATS),
    )
    assert parser.session_id == SID
    assert text(events) == "Hello, world."
    usage = {"inputTokens": 80, "outputTokens": 16, "cachedInputTokens": 12, "totalTokens": 96}
    assert of_type(events, RunEventType.USAGE) == [usage]
    assert end(parser).data == {"usage": usage, "sessionId": SID}


def test_gemini_tool_calls_start_and_finish() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    tool_id = "run_shell_command__run_shell_command_1796345156159_0"
    events = feed(
        parser,
        g("tool_use", tool_name="run_shell_command", tool_id=tool_id,
          parameters={"command": "echo hi-there"}),
        g("tool_result", tool_id=tool_id, status="success", output="hi-there"),
        g("tool_use", tool_name="read_file", tool_id="r1", parameters={"file_path": "x"}),
        g("tool_result", tool_id="r1", status="error",
          error={"type": "FILE_NOT_FOUND", "message": "File not found: x"}),
    )  # fmt: skip
    assert of_type(events, RunEventType.TOOL_STARTED)[0] == {
        "toolId": tool_id,
        "name": "run_shell_command",
        "input": {"command": "echo hi-there"},
    }
    assert of_type(events, RunEventType.TOOL_FINISHED) == [
        {"toolId": tool_id, "name": "run_shell_command", "isError": False, "output": "hi-there"},
        {"toolId": "r1", "name": "read_file", "isError": True, "output": "File not found: x"},
    ]


def test_gemini_api_error_result_is_said_in_words() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    body = '{"error":{"code":401,"message":"Request had invalid authentication credentials.",'
    body += '"status":"UNAUTHENTICATED"}}'
    error = {"type": "unknown", "message": f"[API Error: {body}]"}
    feed(parser, g("init", session_id=SID), g("result", status="error", error=error, stats={}))
    assert end(parser, 145).data == {
        "code": "not_logged_in",
        "message": "API error 401 UNAUTHENTICATED: Request had invalid authentication credentials.",
    }


def test_gemini_error_result_with_exit_status_0_still_fails() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    events = feed(
        parser,
        *g_answer("Hel", "lo", "Hel", "lo"),
        g("error", severity="error", message="Model stream ended without a finish reason."),
        g("result", status="error", stats=G_STATS),
    )
    assert text(events) == "HelloHello"  # gemini's retries cannot take back what was said
    assert end(parser, 0).data == {
        "code": "provider_unreachable",
        "message": "Model stream ended without a finish reason.",
    }


def test_gemini_quota_error_is_rate_limited() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    error = {"type": "unknown", "message": "[API Error: Quota exceeded for quota metric"
             " 'gemini-3-flash Requests' of service 'cloudcode-pa.googleapis.com'.]"}  # fmt: skip
    feed(parser, g("result", status="error", error=error, stats=G_STATS))
    assert end(parser, 173).data["code"] == "rate_limited"


def test_gemini_authentication_failure_on_stderr_only_is_not_logged_in() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    stderr = (
        "YOLO mode is enabled. All tool calls will be automatically approved.\n"
        "Error authenticating: FatalAuthenticationError: Manual authorization is required but"
        " the current session is non-interactive.\n"
        "    at initOauthClient (file:///opt/hearth/vendor/bundle/chunk-JDPZ4CE3.js:279252:13)\n"
        "    at async Config.refreshAuth (file:///opt/hearth/vendor/bundle/chunk.js:379274:29)\n"
        "  exitCode: 41\n}\n"
        "\x1b[31mManual authorization is required but the current session is non-interactive."
        "\x1b[0m"
    )
    final = end(parser, 41, err=stderr)
    assert final.data == {
        "code": "not_logged_in",
        "message": "Manual authorization is required but the current session is non-interactive.",
    }


def test_gemini_exit_status_41_alone_means_not_logged_in() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    assert end(parser, 41, err="Invalid auth method selected.").data["code"] == "not_logged_in"
    assert end(parser_for(Provider.GEMINI_CLI), 41).data["code"] == "not_logged_in"
    assert end(parser_for(Provider.GEMINI_CLI), 130).data["code"] == "cancelled"


def test_gemini_stack_frames_and_notices_on_stderr_name_no_cause() -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    stderr = (
        "Warning: 256-color support not detected.\nRipgrep is not available. Falling back.\n"
        "    at async Config.refreshAuth (file:///x/network/chunk.js:1:2)\n"
    )
    assert end(parser, 0, err=stderr).data == {
        "code": "cli_crashed",
        "message": "gemini exited with status 0 before it reported a result",
    }


@pytest.mark.parametrize(
    ("said", "status", "code"),
    [
        ("[API Error: Resource has been exhausted (e.g. check quota).]\nPlease wait and try again"
         " later. To increase your limits, request a quota increase", 173, "rate_limited"),
        ("[API Error: exception TypeError: fetch failed sending request]", 1,
         "provider_unreachable"),
    ],
)  # fmt: skip
def test_gemini_gives_up_after_its_retries(said: str, status: int, code: str) -> None:
    parser = parser_for(Provider.GEMINI_CLI)
    feed(parser, g("result", status="error", error={"type": "unknown", "message": said}))
    final = end(parser, status)
    assert final.data["code"] == code
    assert "\n" not in final.data["message"]
