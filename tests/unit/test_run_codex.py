"""Codex's exec --json events read into run events: messages, tools, usage, failures."""

from __future__ import annotations

import pytest

from hearth.runs import RunEventType, parser_for
from hearth_agent.wire import Provider
from tests.unit.run_streams import THREAD, X_USAGE, end, feed, of_type, x_item


def test_codex_answer_is_one_delta_and_completes_with_the_threads_usage() -> None:
    parser = parser_for(Provider.CODEX)
    events = feed(
        parser,
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "turn.started"},
        x_item("completed", "item_0", "agent_message", text="Hello, world."),
        {"type": "turn.completed", "usage": X_USAGE},
    )
    assert parser.session_id == THREAD
    assert [e.type for e in events] == [RunEventType.MESSAGE_DELTA, RunEventType.USAGE]
    usage = {"inputTokens": 30, "outputTokens": 9, "cachedInputTokens": 5, "totalTokens": 39,
             "cacheWriteInputTokens": 0, "reasoningOutputTokens": 2}  # fmt: skip
    assert parser.usage == usage
    assert end(parser).data == {"usage": usage, "sessionId": THREAD}


def test_codex_message_updated_as_it_grows_is_not_repeated() -> None:
    parser = parser_for(Provider.CODEX)
    events = feed(
        parser,
        x_item("started", "i", "agent_message", text=""),
        x_item("updated", "i", "agent_message", text="Hel"),
        x_item("completed", "i", "agent_message", text="Hello"),
    )
    assert [e.data["text"] for e in events] == ["Hel", "lo"]


def test_codex_tools_start_and_finish() -> None:
    parser = parser_for(Provider.CODEX)
    command = {"command": "/bin/bash -lc 'false'", "aggregated_output": "", "exit_code": None}
    events = feed(
        parser,
        x_item("started", "item_1", "command_execution", **command, status="in_progress"),
        x_item("completed", "item_1", "command_execution", **command | {"exit_code": 1},
               status="failed"),
        x_item("completed", "item_2", "file_change", status="completed",
               changes=[{"path": "a.py", "kind": "add"}]),
        x_item("completed", "item_3", "mcp_tool_call", server="docs", tool="search",
               arguments={"q": "x"}, result={"content": [{"type": "text", "text": "hit"}]},
               error=None, status="completed"),
        x_item("completed", "item_4", "mcp_tool_call", server="docs", tool="search",
               arguments={}, result=None, error={"message": "boom"}, status="failed"),
    )  # fmt: skip
    assert [(e.type.value, e.data["toolId"]) for e in events] == [
        ("tool.started", "item_1"),
        ("tool.finished", "item_1"),
        ("tool.started", "item_2"),
        ("tool.finished", "item_2"),
        ("tool.started", "item_3"),
        ("tool.finished", "item_3"),
        ("tool.started", "item_4"),
        ("tool.finished", "item_4"),
    ]
    started, finished = (
        of_type(events, RunEventType.TOOL_STARTED),
        of_type(events, RunEventType.TOOL_FINISHED),
    )
    assert started[0] == {
        "toolId": "item_1",
        "name": "command_execution",
        "input": {"command": "/bin/bash -lc 'false'"},
    }
    assert finished[0] == {
        "toolId": "item_1",
        "name": "command_execution",
        "isError": True,
        "output": "",
        "exitCode": 1,
    }
    assert finished[1] == {"toolId": "item_2", "name": "file_change", "isError": False}
    assert started[2]["name"] == "docs/search"
    assert (finished[2]["output"], finished[2]["isError"]) == ("hit", False)
    assert (finished[3]["output"], finished[3]["isError"]) == ("boom", True)


def test_codex_mcp_result_blocks_read_one_a_line_other_blocks_named() -> None:
    parser = parser_for(Provider.CODEX)
    content = [{"type": "text", "text": "hit"}, {"type": "image", "data": "iVBO"}, {"x": 1}]
    events = feed(
        parser,
        x_item("completed", "item_0", "mcp_tool_call", server="docs", tool="shot", arguments={},
               result={"content": content}, error=None, status="completed"),
        x_item("completed", "item_1", "mcp_tool_call", server="docs", tool="shot", arguments={},
               result={"content": "not blocks"}, error=None, status="completed"),
    )  # fmt: skip
    outputs = [e["output"] for e in of_type(events, RunEventType.TOOL_FINISHED)]
    assert outputs == ["hit\n[image]\n[content]", ""]


def test_codex_warning_items_and_reasoning_are_raw_and_do_not_fail_the_run() -> None:
    parser = parser_for(Provider.CODEX)
    warning = "Model metadata for `gpt-x` not found. Defaulting to fallback metadata"
    events = feed(
        parser,
        x_item("completed", "item_0", "error", message=warning),
        x_item("completed", "item_1", "reasoning", text="**Thinking**"),
        {"type": "turn.completed", "usage": X_USAGE},
    )
    assert len(of_type(events, RunEventType.RAW)) == 2
    assert end(parser).type is RunEventType.COMPLETED


@pytest.mark.parametrize(
    ("said", "code"),
    [
        ("unexpected status 401 Unauthorized: Incorrect API key provided: sk-proj-****1234., "
         "url: https://chatgpt.com/backend-api/codex/responses", "not_logged_in"),
        ("Your access token could not be refreshed because your refresh token was revoked. "
         "Please log out and sign in again.", "not_logged_in"),
        ("exceeded retry limit, last status: 429 Too Many Requests", "rate_limited"),
        ("You\u2019ve hit your usage limit. Upgrade to Pro or try again "
         "at 1:53 AM.", "rate_limited"),
        ("We\u2019re currently experiencing high demand, which may cause temporary errors.",
         "provider_unreachable"),
        ("stream disconnected before completion: stream closed before response.completed",
         "provider_unreachable"),
    ],
)  # fmt: skip
def test_codex_failed_turns_map_to_failures(said: str, code: str) -> None:
    parser = parser_for(Provider.CODEX)
    events = feed(
        parser,
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "error", "message": f"Reconnecting... 1/1 ({said})"},
        {"type": "error", "message": said},
        {"type": "turn.failed", "error": {"message": said}},
    )
    assert len(of_type(events, RunEventType.RAW)) == 2
    final = end(parser, 1)
    assert final.data["code"] == code


def test_codex_killed_while_waiting_for_the_network_is_unreachable() -> None:
    parser = parser_for(Provider.CODEX)
    waiting = "Reconnecting... waiting for network (Connection failed: error sending request)"
    feed(parser, {"type": "thread.started", "thread_id": THREAD}, {"type": "error",
         "message": waiting})  # fmt: skip
    assert end(parser, None, 15).data == {"code": "provider_unreachable", "message": waiting}


def test_codex_resume_of_an_unknown_thread_fails_with_its_stderr() -> None:
    parser = parser_for(Provider.CODEX)
    stderr = (
        "Error: thread/resume: thread/resume failed: no rollout found for thread id "
        f"{THREAD} (code -32600)\n\nStack backtrace:\n   0: <unknown>\n"
    )
    final = end(parser, 1, err=stderr)
    assert final.data["code"] == "cli_crashed"
    assert final.data["message"].startswith("codex exited with status 1 before it reported")
    assert f"no rollout found for thread id {THREAD}" in final.data["message"]
