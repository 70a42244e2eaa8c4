"""A stream parser's checkpoint is bounded, whatever the guest's CLI prints.

The pump stores the checkpoint with every exec event (``hearth.control.run_pump``). Parsers kept
every tool id and message id of the run, at any length: the checkpoint, and each write of it,
grew with the run (20 MB after 200 tool lines with 100 KB ids; 6 KB a turn over a long run's
thousands), so a run's memory, CPU and store writes grew with its square.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from hearth.control.execs import ExecEvent
from hearth.runs import RunEventType, StreamParser, parser_for
from hearth.runs.recall import MAX_ID_CHARS, MAX_OPEN_TOOLS
from hearth.runs.stream import MAX_CHECKPOINT_CHARS
from hearth.store.records import RunEventRecord
from hearth_agent.wire import Provider
from tests.unit.run_streams import (
    G_STATS,
    THREAD,
    c_assistant,
    c_delta,
    c_init,
    c_result,
    c_se,
    c_start,
    end,
    feed,
    g,
    of_type,
    x_item,
)
from tests.unit.test_run_pump import Exec, Runs, Store, new_store, pump

CLIS = [Provider.CLAUDE_CODE, Provider.CODEX, Provider.GEMINI_CLI]
Line = dict[str, Any]


def size(parser: StreamParser) -> int:
    """The checkpoint's size as the pump stores it (compact JSON)."""
    return len(json.dumps(parser.checkpoint(), separators=(",", ":")))


def restored(parser: StreamParser, provider: Provider) -> StreamParser:
    again = parser_for(provider)
    again.restore(json.loads(json.dumps(parser.checkpoint())))
    return again


def c_tool(tool_id: str, name: str = "Bash", mid: str = "msg_1") -> Line:
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {"command": "ls"}}
    return c_assistant(mid, block)


def c_tool_result(tool_id: str) -> Line:
    result = {"type": "tool_result", "tool_use_id": tool_id, "content": "ok", "is_error": False}
    return {"type": "user", "message": {"content": [result]}, "parent_tool_use_id": None}


def x_command(stage: str, item_id: str) -> Line:
    done = {"aggregated_output": "ok", "exit_code": 0} if stage == "completed" else {}
    status = "completed" if stage == "completed" else "in_progress"
    return x_item(stage, item_id, "command_execution", command="ls", status=status, **done)


def g_tool(tool_id: str, name: str = "run_shell_command") -> Line:
    return g("tool_use", tool_name=name, tool_id=tool_id, parameters={"command": "ls"})


def g_tool_result(tool_id: str) -> Line:
    return g("tool_result", tool_id=tool_id, status="success", output="ok")


# One turn of a long agentic session: a message, a tool call and its result.
def claude_turn(n: int) -> list[Line]:
    mid, tool_id = f"msg_01{n:020d}", f"toolu_01{n:022d}"
    said = {"type": "text", "text": "Let me look."}
    return [
        c_start(mid),
        c_delta("Let me look."),
        c_assistant(mid, said),
        c_tool(tool_id, mid=mid),
        c_tool_result(tool_id),
    ]


def codex_turn(n: int) -> list[Line]:
    return [
        x_command("started", f"item_{2 * n:06d}"),
        x_command("completed", f"item_{2 * n:06d}"),
        x_item("completed", f"item_{2 * n + 1:06d}", "agent_message", text="Done."),
    ]


def gemini_turn(n: int) -> list[Line]:
    tool_id = f"run_shell_command-{1764809149224 + n}-{n:012x}"
    return [
        g_tool(tool_id),
        g_tool_result(tool_id),
        g("message", role="assistant", content="Done.", delta=True),
    ]


TURNS: dict[Provider, Callable[[int], list[Line]]] = {
    Provider.CLAUDE_CODE: claude_turn,
    Provider.CODEX: codex_turn,
    Provider.GEMINI_CLI: gemini_turn,
}


@pytest.mark.parametrize("provider", CLIS)
def test_a_long_runs_checkpoint_keeps_its_size_turn_after_turn(provider: Provider) -> None:
    parser = parser_for(provider)
    sizes = []
    for n in range(1500):
        feed(parser, *TURNS[provider](n))
        sizes.append(size(parser))
    assert max(sizes[100:]) <= max(sizes[:100]) < 8 * 1024, (sizes[99], sizes[-1])


# Each CLI's line of a tool call that starts, and of one that finishes.
TOOL_LINES: dict[Provider, tuple[Callable[[str], Line], Callable[[str], Line]]] = {
    Provider.CLAUDE_CODE: (c_tool, c_tool_result),
    Provider.CODEX: (lambda i: x_command("started", i), lambda i: x_command("completed", i)),
    Provider.GEMINI_CLI: (g_tool, g_tool_result),
}
# Each CLI's first line, naming the session.
OPENINGS: dict[Provider, Line] = {
    Provider.CLAUDE_CODE: c_init(),
    Provider.CODEX: {"type": "thread.started", "thread_id": THREAD},
    Provider.GEMINI_CLI: g("init", session_id=THREAD, model="gemini-test"),
}


def starts(provider: Provider, tool_id: str) -> Line:
    return TOOL_LINES[provider][0](tool_id)


def finishes(provider: Provider, tool_id: str) -> Line:
    return TOOL_LINES[provider][1](tool_id)


# Lines whose id (or tool name) is past MAX_ID_CHARS, as a hostile CLI could print them.
def hostile(provider: Provider, n: int) -> list[Line]:
    long = f"{n:06d}" + "x" * 100_000
    return {
        Provider.CLAUDE_CODE: [
            c_tool(long),
            c_tool(f"toolu_{n}", name=long),
            c_tool_result(long),
            c_start(long),
            c_se({"type": "message_start", "message": {"id": "m"}}, api_message_id=long),
        ],
        Provider.CODEX: [
            x_command("started", long),
            x_item("completed", long, "agent_message", text="Done."),
        ],
        Provider.GEMINI_CLI: [g_tool(long), g_tool(f"t{n}", name=long), g_tool_result(long)],
    }[provider]


@pytest.mark.parametrize("provider", CLIS)
def test_an_id_past_the_limit_passes_its_line_on_raw_and_is_not_kept(provider: Provider) -> None:
    parser = parser_for(provider)
    if provider is Provider.CLAUDE_CODE:
        feed(parser, c_init())  # the session its lines name
    first = size(parser)
    for n in range(200):
        for line in hostile(provider, n):
            assert [e.type for e in parser.feed_line(json.dumps(line))] == [RunEventType.RAW]
    assert size(parser) == first


@pytest.mark.parametrize("provider", CLIS)
def test_an_id_at_the_limit_is_an_id(provider: Provider) -> None:
    tool_id = "i" * MAX_ID_CHARS
    line = starts(provider, tool_id)
    started = of_type(feed(parser_for(provider), line), RunEventType.TOOL_STARTED)
    assert [e["toolId"] for e in started] == [tool_id]


@pytest.mark.parametrize("provider", CLIS)
def test_tool_calls_that_never_finish_are_kept_only_the_newest(provider: Provider) -> None:
    parser = parser_for(provider)
    feed(parser, *[starts(provider, f"call_{n:06d}") for n in range(1000)])
    assert size(parser) <= MAX_CHECKPOINT_CHARS
    # The newest still finish as they started; the oldest gave way (its name is not known; a
    # codex item, which names itself again, is taken for one not seen starting).
    again = restored(parser, provider)
    for parsed in (parser, again):
        kept = MAX_OPEN_TOOLS
        newest, oldest = (
            [(e.type, e.data["name"]) for e in feed(parsed, finishes(provider, f"call_{n:06d}"))]
            for n in (1000 - kept, 999 - kept)
        )
        name = {
            Provider.CLAUDE_CODE: "Bash",
            Provider.CODEX: "command_execution",
            Provider.GEMINI_CLI: "run_shell_command",
        }[provider]
        assert newest == [(RunEventType.TOOL_FINISHED, name)]
        assert (
            oldest
            == {
                Provider.CLAUDE_CODE: [(RunEventType.TOOL_FINISHED, "")],
                Provider.CODEX: [
                    (RunEventType.TOOL_STARTED, name),
                    (RunEventType.TOOL_FINISHED, name),
                ],
                Provider.GEMINI_CLI: [(RunEventType.TOOL_FINISHED, "")],
            }[provider]
        )


def big_errors(provider: Provider, message: str) -> list[Line]:
    """The CLI's latest error and its failure report, both saying ``message``."""
    return {
        Provider.CLAUDE_CODE: [
            c_se({"type": "error", "error": {"message": message}}),
            c_result(ok=False, result=message) | {"subtype": "error_during_execution"},
        ],
        Provider.CODEX: [
            {"type": "error", "message": message},
            {"type": "turn.failed", "error": {"message": message}},
        ],
        Provider.GEMINI_CLI: [
            g("error", severity="error", message=message),
            g("result", status="error", error={"type": "Error", "message": message}, stats=G_STATS),
        ],
    }[provider]


@pytest.mark.parametrize("provider", CLIS)
def test_megabytes_of_error_message_are_cut_and_the_run_ends_as_the_cli_said(
    provider: Provider,
) -> None:
    parser = parser_for(provider)
    feed(parser, OPENINGS[provider], starts(provider, "call_1"))
    feed(parser, *big_errors(provider, "\U0001f525" * 100_000))  # 1.2 MB of JSON, twice
    assert size(parser) <= MAX_CHECKPOINT_CHARS
    again = restored(parser, provider)
    assert again.session_id == parser.session_id
    # What the parser knew besides still fits, and is kept: the tool's name.
    line = finishes(provider, "call_1")
    assert again.feed_line(json.dumps(line)) == parser.feed_line(json.dumps(line))
    assert end(again, 1) == end(parser, 1)
    assert end(again, 1).type is RunEventType.FAILED


@pytest.mark.parametrize("provider", CLIS)
def test_a_checkpoint_past_its_cap_keeps_how_the_run_ends(provider: Provider) -> None:
    # Ids at the limit, each character twelve of JSON: the tool calls alone pass the cap.
    parser = parser_for(provider)
    feed(parser, OPENINGS[provider])
    for n in range(MAX_OPEN_TOOLS):
        feed(parser, starts(provider, f"{n:04d}" + "\U0001f525" * (MAX_ID_CHARS - 4)))
    ending: Line = {
        Provider.CLAUDE_CODE: c_result(),
        Provider.CODEX: {"type": "turn.completed", "usage": {"input_tokens": 5}},
        Provider.GEMINI_CLI: g("result", status="success", stats=G_STATS),
    }[provider]
    feed(parser, ending)
    assert size(parser) <= MAX_CHECKPOINT_CHARS
    again = restored(parser, provider)
    assert (again.session_id, again.usage) == (parser.session_id, parser.usage)
    assert end(again) == end(parser)
    assert end(again).type is RunEventType.COMPLETED


def test_a_claude_checkpoint_of_the_layout_before_bounds_keeps_the_newest_tools() -> None:
    stored = {
        "sessionId": None, "usage": None, "outcome": None, "lastError": None,
        "messageId": None, "streamed": {}, "accounted": {}, "refusal": None,
        "tools": {f"toolu_{n:04d}": f"tool{n}" for n in range(1000)},
    }  # fmt: skip
    parser = parser_for(Provider.CLAUDE_CODE)
    parser.restore(stored)
    tools = parser.checkpoint()["tools"]
    assert list(tools) == [f"toolu_{n:04d}" for n in range(1000 - MAX_OPEN_TOOLS, 1000)]
    finished = of_type(feed(parser, c_tool_result("toolu_0999")), RunEventType.TOOL_FINISHED)
    assert finished[0]["name"] == "tool999"


def test_a_codex_checkpoint_of_the_layout_before_bounds_still_restores() -> None:
    # Sets, sorted: every item started, and those finished.
    stored = {
        "sessionId": THREAD, "usage": None, "outcome": None, "lastError": None, "said": {},
        "started": ["item_0", "item_1", "item_2"], "finished": ["item_0", "item_2"],
    }  # fmt: skip
    parser = parser_for(Provider.CODEX)
    parser.restore(stored)
    events = feed(parser, *[x_command("completed", f"item_{n}") for n in range(4)])
    assert [(e.type, e.data["toolId"]) for e in events] == [
        (RunEventType.TOOL_FINISHED, "item_1"),
        (RunEventType.TOOL_STARTED, "item_3"),
        (RunEventType.TOOL_FINISHED, "item_3"),
    ]


class WrittenRuns(Runs):
    """The fake store's runs, counting what each write of the checkpoint takes."""

    def __init__(self, runs: Runs) -> None:
        super().__init__(runs.run)
        self.written: list[int] = []

    async def append_events(
        self, run_id: str, events: list[RunEventRecord], **written: Any
    ) -> None:
        self.written.append(len(written.get("checkpoint") or ""))
        await super().append_events(run_id, events, **written)


async def test_the_pumps_write_per_exec_event_stays_flat_over_a_long_run() -> None:
    turns = 1000
    output = [ExecEvent(1, "stdout", {"data": json.dumps(c_init()) + "\n"})]
    for n in range(turns):
        data = "".join(json.dumps(line) + "\n" for line in claude_turn(n))
        output.append(ExecEvent(n + 2, "stdout", {"data": data}))
    output.append(ExecEvent(turns + 2, "stdout", {"data": json.dumps(c_result()) + "\n"}))
    output.append(ExecEvent(turns + 3, "exit", {"code": 0, "signal": None, "reason": "exited"}))
    runs = WrittenRuns(new_store().runs)
    store = Store(runs)
    await pump(store, Exec(output=output)).run_to_end()
    assert runs.stored[-1].type == RunEventType.COMPLETED.value
    written = runs.written[1 : turns + 1]  # the turns' events
    assert max(written[100:]) <= max(written[:100]) < 8 * 1024, (written[99], written[-1])
