"""A run's events: one schema for what every vendor CLI's headless stream says.

A run is a vendor CLI started in its own headless mode; its stdout is a stream of JSON lines in
that CLI's own format. A ``StreamParser`` turns each line into ``RunEvent``s of one schema, the
same for all three CLIs (``data`` is wire data, camelCase keys)::

    run.started    {"runId", "provider", "model", "resume"}   the service emits it, not a parser
    message.delta  {"text"}                              assistant text, in order, never twice
    tool.started   {"toolId", "name", "input", "parentToolId"?}
    tool.finished  {"toolId", "name", "output"?, "isError", "parentToolId"?, "exitCode"?}
    usage          {"inputTokens", "outputTokens", "cachedInputTokens", "totalTokens", ...}
    raw            {"event": {...}} or {"line": "..."}   whatever the CLI said that does not map
    run.completed  {"usage", "sessionId"}                 ─┐ exactly one of these two, last,
    run.failed     {"code", "message"}                    ─┘ from ``StreamParser.finish``

Token counts: ``inputTokens`` is every prompt token the model read, cached ones included;
``cachedInputTokens`` is how many of those came from the provider's prompt cache;
``outputTokens`` is what the model wrote (reasoning included where the CLI counts it there);
``totalTokens`` is the CLI's own total, else input plus output. A CLI's extra counts follow in
camelCase (``cacheWriteInputTokens``, ``reasoningOutputTokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

# A tool's output is kept up to this many characters in its ``tool.finished`` event: a tool that
# read a large file must not make one stored event of that size.
TOOL_OUTPUT_MAX_CHARS = 32 * 1024
# A stdout line that is not JSON is passed on up to this many characters.
RAW_LINE_MAX_CHARS = 16 * 1024
FAILED_MESSAGE_MAX_CHARS = 2000  # a failed run's message, which may quote the CLI or the VM's agent


class RunEventType(StrEnum):
    """What a run event says; the value is its ``type`` on the wire."""

    STARTED = "run.started"  # the CLI was started in the VM (the service emits it)
    MESSAGE_DELTA = "message.delta"  # the next piece of the assistant's text
    TOOL_STARTED = "tool.started"  # the CLI began a tool call (a command, an edit, a search)
    TOOL_FINISHED = "tool.finished"  # that tool call ended, with its output
    USAGE = "usage"  # token counts, as the CLI reported them at the end of a turn
    COMPLETED = "run.completed"  # the CLI answered and exited cleanly (terminal)
    FAILED = "run.failed"  # it did not; ``code`` is a RunFailure (terminal)
    RAW = "raw"  # a line or event of the CLI's own that has no place in this schema


class RunFailure(StrEnum):
    """Why a run failed: the ``code`` of its ``run.failed`` event."""

    NOT_LOGGED_IN = "not_logged_in"  # the provider refused the login (401/403, expired refresh)
    PROVIDER_UNREACHABLE = "provider_unreachable"  # network, TLS, proxy, 5xx or a cut stream
    RATE_LIMITED = "rate_limited"  # 429, the plan's usage limit or quota
    TIMEOUT = "timeout"  # the run outlived its timeout (the service decides)
    CANCELLED = "cancelled"  # a client cancelled it (the service decides), or the CLI was aborted
    CLI_CRASHED = "cli_crashed"  # killed by a signal, or failed without a recognised cause


@dataclass(frozen=True)
class RunEvent:
    """One event of a run; ``data`` is its wire payload (camelCase keys)."""

    type: RunEventType
    data: dict[str, Any]


class StreamParser(Protocol):
    """Reads one CLI's headless stdout, line by line, into run events."""

    session_id: str | None  # the CLI's own session (thread) id, as soon as the stream names it
    usage: dict[str, Any] | None  # the latest token counts, normalised (see the module docstring)

    def feed_line(self, line: str) -> list[RunEvent]:
        """The events one stdout line (without its newline) adds; never raises on bad input."""
        ...

    def finish(self, *, exit_code: int | None, signal: int | None, stderr_tail: str) -> RunEvent:
        """The one terminal event, once the CLI has exited: ``run.completed`` or ``run.failed``."""
        ...

    def checkpoint(self) -> dict[str, Any]:
        """What the parser has learnt from the lines so far, as JSON data."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a ``checkpoint`` of a parser of the same CLI, as if this one had read its
        lines (KeyError, TypeError or ValueError for data no checkpoint gives)."""
        ...


def message_delta(text: str) -> RunEvent:
    """The next piece of the assistant's text."""
    return RunEvent(RunEventType.MESSAGE_DELTA, {"text": text})


def deltas(text: str) -> list[RunEvent]:
    """The next piece of the assistant's text as events: none for no text."""
    return [message_delta(text)] if text else []


def tool_started(
    tool_id: str, name: str, tool_input: Any, *, parent_tool_id: str | None = None
) -> RunEvent:
    """A tool call began; ``tool_input`` is what the model asked for, as the CLI gave it."""
    data: dict[str, Any] = {"toolId": tool_id, "name": name, "input": tool_input}
    if parent_tool_id:
        data["parentToolId"] = parent_tool_id
    return RunEvent(RunEventType.TOOL_STARTED, data)


def tool_finished(
    tool_id: str,
    name: str,
    *,
    output: str | None,
    is_error: bool,
    parent_tool_id: str | None = None,
    exit_code: int | None = None,
) -> RunEvent:
    """A tool call ended; its output is cut at ``TOOL_OUTPUT_MAX_CHARS``."""
    data: dict[str, Any] = {"toolId": tool_id, "name": name, "isError": is_error}
    if output is not None:
        data["output"] = capped(output, TOOL_OUTPUT_MAX_CHARS)
    if parent_tool_id:
        data["parentToolId"] = parent_tool_id
    if exit_code is not None:
        data["exitCode"] = exit_code
    return RunEvent(RunEventType.TOOL_FINISHED, data)


def usage_event(usage: dict[str, Any]) -> RunEvent:
    """Token counts (normalised keys)."""
    return RunEvent(RunEventType.USAGE, dict(usage))


def raw_event(event: dict[str, Any]) -> RunEvent:
    """A JSON event of the CLI's own that does not map onto the schema, passed on as it is."""
    return RunEvent(RunEventType.RAW, {"event": event})


def raw_line(line: str) -> RunEvent:
    """A stdout line that is not a JSON object (cut at ``RAW_LINE_MAX_CHARS``)."""
    return RunEvent(RunEventType.RAW, {"line": capped(line, RAW_LINE_MAX_CHARS)})


def completed(usage: dict[str, Any] | None, session_id: str | None) -> RunEvent:
    """The terminal event of a run the CLI finished."""
    return RunEvent(RunEventType.COMPLETED, {"usage": usage, "sessionId": session_id})


def failed(code: RunFailure, message: str) -> RunEvent:
    """The terminal event of a run that failed; ``message`` must carry no secret (cut to
    ``FAILED_MESSAGE_MAX_CHARS``: it may quote the CLI or the VM's agent)."""
    said = capped(message, FAILED_MESSAGE_MAX_CHARS)
    return RunEvent(RunEventType.FAILED, {"code": code.value, "message": said})


def token_usage(
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    total_tokens: int | None = None,
    **extra: int,
) -> dict[str, Any]:
    """Token counts in the wire's shape; ``extra`` are further counts, keyed in camelCase."""
    total = input_tokens + output_tokens if total_tokens is None else total_tokens
    return {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "cachedInputTokens": cached_input_tokens,
        "totalTokens": total,
        **extra,
    }


def capped(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
