"""Codex's ``codex exec --json`` stream.

Each stdout line is one ``ThreadEvent`` (codex-rs ``exec/src/exec_events.rs``; read against
codex 0.171.0's own output)::

    thread.started {thread_id}          the session id ``codex exec resume`` takes
    turn.started {}
    item.started | item.updated | item.completed {item: {id, type, ...}}
        agent_message {text}            whole messages: exec --json streams no deltas
        command_execution {command, aggregated_output, exit_code, status}
        file_change {changes, status}   completed only
        mcp_tool_call {server, tool, arguments, result?, error?, status}
        collab_tool_call {tool, prompt?, receiver_thread_ids, status}
        web_search {query, action}
        reasoning {text}, todo_list {items}, plan {text}
        error {message}                 a warning (an unknown model's metadata…): not fatal
    turn.completed {usage: {input_tokens, cached_input_tokens, output_tokens, …}}
    turn.failed {error: {message}}
    error {message}                     a retry notice ("Reconnecting... 1/5 (…)") or the
                                        failure itself, said again by turn.failed

Usage is the thread's: a resumed thread's ``turn.completed`` counts its earlier turns too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from hearth.runs.events import (
    RunEvent,
    deltas,
    raw_event,
    token_usage,
    tool_finished,
    tool_started,
)
from hearth.runs.recall import RECENT_MESSAGES, ToolCalls, id_of, newest, remember
from hearth.runs.stream import CliStream, blocks_text, dict_of, int_of, list_of, status_of, text_of

_ITEM_EVENTS = frozenset({"item.started", "item.updated", "item.completed"})
_FAILED = frozenset({"failed", "declined"})


def _command(item: dict[str, Any]) -> tuple[str, Any]:
    return "command_execution", {"command": text_of(item.get("command"))}


def _file_change(item: dict[str, Any]) -> tuple[str, Any]:
    return "file_change", {"changes": list_of(item.get("changes"))}


def _mcp(item: dict[str, Any]) -> tuple[str, Any]:
    server, tool = text_of(item.get("server")), text_of(item.get("tool"))
    return f"{server}/{tool}" if server else tool, item.get("arguments")


def _collab(item: dict[str, Any]) -> tuple[str, Any]:
    return text_of(item.get("tool")) or "collab_tool_call", {
        "prompt": item.get("prompt"),
        "receiverThreadIds": list_of(item.get("receiver_thread_ids")),
    }


def _web_search(item: dict[str, Any]) -> tuple[str, Any]:
    return "web_search", {"query": text_of(item.get("query")), "action": item.get("action")}


# Item types that are tool calls: how each one's name and input read.
_TOOLS: dict[str, Callable[[dict[str, Any]], tuple[str, Any]]] = {
    "command_execution": _command,
    "file_change": _file_change,
    "mcp_tool_call": _mcp,
    "collab_tool_call": _collab,
    "web_search": _web_search,
}


class CodexStream(CliStream):
    """Parses ``codex exec --json`` output."""

    cli = "codex"

    def __init__(self) -> None:
        super().__init__()
        # agent_message id → the text passed on so far, as its length and digest: all that
        # telling what is new needs, and small enough to checkpoint after every line (the
        # latest RECENT_MESSAGES: an item is updated until it completes, then done with).
        self._said: dict[str, tuple[int, str]] = {}
        # ``_tools``: tool items whose tool.started was emitted, running (``open``) or finished
        # (``done``: their tool.finished was emitted too). Names are not needed again.

    def _own_checkpoint(self) -> dict[str, Any]:
        return {
            "said": {item_id: list(said) for item_id, said in self._said.items()},
            "started": [*self._tools.open, *self._tools.done],
            "finished": list(self._tools.done),
        }

    def _own_restore(self, state: dict[str, Any]) -> None:
        self._said = newest(
            (
                (str(item_id), (int(length), str(digest)))
                for item_id, (length, digest) in state["said"].items()
            ),
            limit=RECENT_MESSAGES,
        )
        finished = [str(item_id) for item_id in state["finished"]]
        done = set(finished)
        running = [str(item_id) for item_id in state["started"] if str(item_id) not in done]
        self._tools = ToolCalls.of(
            {"tools": dict.fromkeys(running, ""), "done": dict.fromkeys(finished, "")}
        )

    def _on_event(self, event: dict[str, Any]) -> list[RunEvent]:
        kind = event.get("type")
        if kind == "thread.started":
            self._saw_session(event.get("thread_id"))
            return []
        if kind == "turn.started":
            return []
        if kind in _ITEM_EVENTS:
            return self._item(kind, dict_of(event.get("item")), event)
        if kind == "turn.completed":
            self._answered(True)
            usage = dict_of(event.get("usage"))
            return [self._counted(_usage(usage))] if usage else []
        if kind == "turn.failed":
            message = text_of(dict_of(event.get("error")).get("message"))
            self._answered(False, message or "codex reported a failed turn")
            return []
        if kind == "error":
            self._erred(event)
        return [raw_event(event)]

    def _item(self, kind: str, item: dict[str, Any], event: dict[str, Any]) -> list[RunEvent]:
        item_type = text_of(item.get("type"))
        item_id = id_of(item.get("id"))
        if item_type == "agent_message":
            # Whole messages today; should a later codex update one as it grows, only what is
            # new is passed on.
            text = text_of(item.get("text"))
            length, digest = self._said.get(item_id, (0, _digest("")))
            if _digest(text[:length]) != digest:
                return []  # not a continuation of what was passed on
            remember(self._said, item_id, (len(text), _digest(text)), limit=RECENT_MESSAGES)
            return deltas(text[length:])
        describe = _TOOLS.get(item_type)
        if describe is None or not item_id:
            return [raw_event(event)]
        events: list[RunEvent] = []
        name, tool_input = describe(item)
        if item_id not in self._tools:
            self._tools.started(item_id, "")  # not its name: unbounded (an MCP server's)
            events.append(tool_started(item_id, name, tool_input))
        if kind == "item.completed" and item_id not in self._tools.done:
            self._tools.finished(item_id)
            events.append(_finished(item_id, name, item))
        return events


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def _finished(item_id: str, name: str, item: dict[str, Any]) -> RunEvent:
    status = text_of(item.get("status"))
    exit_code = status_of(item.get("exit_code"))
    error = text_of(dict_of(item.get("error")).get("message"))
    output: str | None
    if "aggregated_output" in item:
        output = text_of(item.get("aggregated_output"))
    elif error:
        output = error
    elif isinstance(item.get("result"), dict):
        output = blocks_text(dict_of(item.get("result")).get("content"))
    else:
        output = None
    return tool_finished(
        item_id,
        name,
        output=output,
        is_error=status in _FAILED or bool(error) or exit_code not in (None, 0),
        exit_code=exit_code,
    )


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    # OpenAI counts cached tokens inside input_tokens and reasoning inside output_tokens.
    extra = {
        "cacheWriteInputTokens": int_of(usage.get("cache_write_input_tokens")),
        "reasoningOutputTokens": int_of(usage.get("reasoning_output_tokens")),
    }
    return token_usage(
        input_tokens=int_of(usage.get("input_tokens")),
        output_tokens=int_of(usage.get("output_tokens")),
        cached_input_tokens=int_of(usage.get("cached_input_tokens")),
        **extra,
    )
