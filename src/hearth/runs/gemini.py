"""Gemini CLI's ``gemini -p --output-format stream-json`` stream.

Each stdout line is one event of gemini-cli's ``StreamJsonFormatter`` (0.61.0, read from its
bundle and its own output against a stand-in of the Gemini API)::

    init        {session_id, model}       the session id ``--resume`` takes
    message     {role: "user", content}   the prompt, echoed: not passed on
    message     {role: "assistant", content, delta: true}
    tool_use    {tool_name, tool_id, parameters}
    tool_result {tool_id, status: success | error, output?, error?: {type, message}}
    error       {severity: warning | error, message}
    result      {status: success | error, error?: {type, message}, stats: {total_tokens,
                input_tokens, output_tokens, cached, input, duration_ms, tool_calls, models}}

A ``result`` with ``status: error`` can come with exit status 0 (a stream the model ended
without a finish reason, after the CLI's own retries). Failures before the first line
(authentication, an untrusted folder) are said on stderr only, with the exit status of
``ExitCodes``: 41 for authentication, 130 for a cancellation. Gemini retries a stream that
breaks off from its start without taking back the deltas already printed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hearth.runs.events import RunEvent, RunFailure, deltas, raw_event, token_usage
from hearth.runs.recall import ToolCalls, id_of
from hearth.runs.stream import CliStream, dict_of, int_of, text_of

# The error types (class names) gemini reports in a result, and the failure each one is.
ERROR_TYPES: dict[str, RunFailure] = {
    "FatalAuthenticationError": RunFailure.NOT_LOGGED_IN,
    "FatalCancellationError": RunFailure.CANCELLED,
}


class GeminiStream(CliStream):
    """Parses ``gemini -p --output-format stream-json`` output."""

    cli = "gemini"
    exit_codes: ClassVar[dict[int, RunFailure]] = {
        41: RunFailure.NOT_LOGGED_IN,
        130: RunFailure.CANCELLED,
    }

    def _own_checkpoint(self) -> dict[str, Any]:
        return self._tools.data()

    def _own_restore(self, state: dict[str, Any]) -> None:
        self._tools = ToolCalls.of(state)

    def _on_event(self, event: dict[str, Any]) -> list[RunEvent]:
        kind = event.get("type")
        if kind == "init":
            self._saw_session(event.get("session_id"))
            return []
        if kind == "message":
            if event.get("role") == "user":
                return []
            if event.get("role") == "assistant":
                return deltas(text_of(event.get("content")))
        if kind == "tool_use":
            tool_id, name = id_of(event.get("tool_id")), id_of(event.get("tool_name"))
            return [self._tool_started(tool_id, name, event.get("parameters"))]
        if kind == "tool_result":
            return [self._tool_result(event)]
        if kind == "error":
            self._erred(event)
        if kind == "result":
            return self._result(event)
        return [raw_event(event)]

    def _tool_result(self, event: dict[str, Any]) -> RunEvent:
        tool_id = id_of(event.get("tool_id"))
        error = dict_of(event.get("error"))
        output = event.get("output")
        return self._tool_finished(
            tool_id,
            output=output if isinstance(output, str) else text_of(error.get("message")) or None,
            is_error=event.get("status") == "error",
        )

    def _result(self, event: dict[str, Any]) -> list[RunEvent]:
        events: list[RunEvent] = []
        stats = dict_of(event.get("stats"))
        if stats:
            events.append(self._counted(_usage(stats)))
        if event.get("status") == "success":
            self._answered(True)
            return events
        error = dict_of(event.get("error"))
        self._answered(
            False, text_of(error.get("message")), ERROR_TYPES.get(text_of(error.get("type")))
        )
        return events


def _usage(stats: dict[str, Any]) -> dict[str, Any]:
    # Gemini's input_tokens (prompt tokens) include the cached ones.
    return token_usage(
        input_tokens=int_of(stats.get("input_tokens")),
        output_tokens=int_of(stats.get("output_tokens")),
        cached_input_tokens=int_of(stats.get("cached")),
        total_tokens=int_of(stats.get("total_tokens")),
    )
