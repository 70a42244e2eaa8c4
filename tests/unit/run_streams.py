"""Lines of the three CLIs' headless streams for the parser tests, and helpers to read events.

The lines are the CLIs' own, as claude-code 2.1.332, codex 0.171.0 and gemini-cli 0.61.0 wrote
them against loopback stand-ins of their provider APIs, trimmed of fields the parsers ignore.
"""

from __future__ import annotations

import json
from typing import Any

from hearth.runs import RunEvent, RunEventType, StreamParser

SID = "0f93dd13-19d3-4113-bc2b-24c9669101f2"
THREAD = "01a23e75-68b4-7d33-9e11-5739f2498f0c"


def feed(parser: StreamParser, *lines: dict[str, Any] | str) -> list[RunEvent]:
    """Feed ``lines`` (objects are JSON-encoded) and collect the events."""
    events: list[RunEvent] = []
    for line in lines:
        events += parser.feed_line(line if isinstance(line, str) else json.dumps(line))
    return events


def text(events: list[RunEvent]) -> str:
    """The assistant text the events say, joined."""
    return "".join(e.data["text"] for e in events if e.type is RunEventType.MESSAGE_DELTA)


def of_type(events: list[RunEvent], kind: RunEventType) -> list[dict[str, Any]]:
    """The data of the events of one type, in order."""
    return [e.data for e in events if e.type is kind]


def end(parser: StreamParser, code: int | None = 0, sig: int | None = None, err: str = "") -> Any:
    """The parser's terminal event for an exit status, a signal and a stderr tail."""
    return parser.finish(exit_code=code, signal=sig, stderr_tail=err)


# -- claude --


def c_init() -> dict[str, Any]:
    """claude's first line."""
    return {"type": "system", "subtype": "init", "session_id": SID, "model": "claude-opus-5-5"}


def c_se(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A claude ``stream_event`` line around an Anthropic streaming event."""
    return {"type": "stream_event", "event": event, "session_id": SID, **extra}


def c_start(mid: str) -> dict[str, Any]:
    """A claude ``message_start`` of the API message ``mid``."""
    return c_se({"type": "message_start", "message": {"id": mid, "content": []}})


def c_delta(chunk: str, index: int = 0) -> dict[str, Any]:
    """A claude text delta of content block ``index``."""
    delta = {"type": "text_delta", "text": chunk}
    return c_se({"type": "content_block_delta", "index": index, "delta": delta})


def c_assistant(mid: str, *blocks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A claude ``assistant`` line with finished content blocks."""
    message = {"id": mid, "model": "claude-test", "content": list(blocks)}
    return {"type": "assistant", "message": message, "parent_tool_use_id": None, **extra}


def c_result(ok: bool = True, **extra: Any) -> dict[str, Any]:
    """claude's last line, with usage."""
    usage = {"input_tokens": 12, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 3}
    return {
        "type": "result",
        "subtype": "success",
        "is_error": not ok,
        "session_id": SID,
        "usage": {**usage, "output_tokens": 7},
        **extra,
    }


def c_refusal(said: str, error: str, status: int | None = None) -> dict[str, Any]:
    """claude's synthetic assistant line for a request the API refused."""
    extra = {"error": error, "is_api_error_message": True, "api_error_status": status}
    line = c_assistant("3b1e", {"type": "text", "text": said}, **extra)
    line["message"]["model"] = "<synthetic>"
    return line


def c_retry(status: int | None, error: str) -> dict[str, Any]:
    """claude's notice that it retries a failed API request."""
    return {"type": "system", "subtype": "api_retry", "attempt": 1, "error_status": status,
            "error": error, "session_id": SID}  # fmt: skip


# -- codex --


def x_item(stage: str, item_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    """A codex ``item.<stage>`` line."""
    return {"type": f"item.{stage}", "item": {"id": item_id, "type": kind, **fields}}


X_USAGE = {"input_tokens": 30, "cached_input_tokens": 5, "cache_write_input_tokens": 0,
           "output_tokens": 9, "reasoning_output_tokens": 2}  # fmt: skip


# -- gemini --

G_STATS = {"total_tokens": 96, "input_tokens": 80, "output_tokens": 16, "cached": 12,
           "input": 68, "duration_ms": 213, "tool_calls": 0, "models": {}}  # fmt: skip


def g(kind: str, **fields: Any) -> dict[str, Any]:
    """A gemini stream-json line."""
    return {"type": kind, "timestamp": "2026-12-04T00:45:49.224Z", **fields}


def g_answer(*chunks: str) -> list[dict[str, Any]]:
    """gemini's assistant deltas."""
    return [g("message", role="assistant", content=c, delta=True) for c in chunks]
