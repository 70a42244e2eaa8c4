"""Claude Code's ``-p --output-format stream-json --verbose --include-partial-messages`` stream.

Each stdout line is one JSON object with a ``type`` (read from claude-code 2.1.332's own output
against a stand-in of the Messages API, and its SDK message schemas)::

    system     subtype init {session_id, model, tools…}; api_retry {attempt, error_status,
               error}; status, and others
    stream_event {event: an Anthropic streaming event (message_start, content_block_start,
               content_block_delta {text_delta | input_json_delta | thinking_delta…},
               content_block_stop, message_delta, message_stop), api_message_id?}
    assistant  {message: {id, content: [text | tool_use | thinking…]}, parent_tool_use_id,
               error?, is_api_error_message?}: one line per finished content block
    user       {message: {content: [tool_result {tool_use_id, content, is_error}]}}
    rate_limit_event {rate_limit_info}
    result     {subtype success | error_*, is_error, result, errors?, usage, api_error_status?,
               api_error?, terminal_reason, session_id}

Text arrives twice: as ``text_delta``s while it streams and again whole in the ``assistant`` line
of its block. The deltas are passed on as they come; an ``assistant`` text adds only what its
block's deltas did not already say (all of it when the CLI fell back to a request without
streaming). A stream the CLI abandons to retry (``message_stop`` with ``abandoned_blocks``)
cannot take back the deltas already passed on; the retry streams the text again, and the
``message_stop`` is passed on as ``raw`` so a client can tell. When the API refuses a request,
claude writes a synthetic ``assistant`` line (``is_api_error_message``; ``error``: its error
kind) with the message a user would see: that is the run's failure, not assistant text.
"""

from __future__ import annotations

from typing import Any

from hearth.runs.events import RunEvent, RunFailure, deltas, raw_event, token_usage
from hearth.runs.failures import classify_status
from hearth.runs.fingerprint import Fingerprint
from hearth.runs.recall import RECENT_MESSAGES, ToolCalls, id_of, newest, remember
from hearth.runs.stream import (
    CliStream,
    Report,
    blocks_text,
    dict_of,
    int_of,
    list_of,
    status_of,
    text_of,
)

# Claude's error kinds (the ``error`` of an assistant line, ``api_error`` of a result, the
# ``error`` of an api_retry) and the failure each one is.
ERROR_KINDS: dict[str, RunFailure] = {
    "authentication_failed": RunFailure.NOT_LOGGED_IN,
    "oauth_org_not_allowed": RunFailure.NOT_LOGGED_IN,
    "account_on_hold": RunFailure.NOT_LOGGED_IN,
    "verification_required": RunFailure.NOT_LOGGED_IN,
    "cloud_credential_error": RunFailure.NOT_LOGGED_IN,
    "rate_limit": RunFailure.RATE_LIMITED,
    "usage_limit_reached": RunFailure.RATE_LIMITED,
    "billing_error": RunFailure.RATE_LIMITED,
    "overloaded": RunFailure.PROVIDER_UNREACHABLE,
    "server_error": RunFailure.PROVIDER_UNREACHABLE,
    "connection_failed": RunFailure.PROVIDER_UNREACHABLE,
}
# Stream events whose content reaches the run through other lines (or not at all).
_QUIET_STREAM_EVENTS = frozenset(
    {"message_start", "content_block_start", "content_block_stop", "message_delta", "ping"}
)
_QUIET_DELTAS = frozenset({"input_json_delta", "signature_delta", "citations_delta"})
_QUIET_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use"})
# Text blocks of one message remembered (streamed, or accounted for): the CLI sends a block's
# ``assistant`` line when the block ends, so one at a time waits for it.
RECENT_BLOCKS = 64


class ClaudeStream(CliStream):
    """Parses ``claude -p --output-format stream-json`` output."""

    cli = "claude"

    def __init__(self) -> None:
        super().__init__()
        self._message_id: str | None = None  # the API message being streamed
        # Per API message (the latest RECENT_MESSAGES): what each content block (by index)
        # streamed as text_deltas, until an ``assistant`` line accounts for it, and which blocks
        # one has accounted for. A fingerprint, not the text: the checkpoint holding it is stored
        # with every exec event.
        self._streamed: dict[str, dict[int, Fingerprint]] = {}
        self._accounted: dict[str, set[int]] = {}
        self._refusal: Report | None = None  # the latest synthetic API-error message

    def _own_checkpoint(self) -> dict[str, Any]:
        return {
            "messageId": self._message_id,
            "streamed": {
                message_id: [[index, *said.data()] for index, said in blocks.items()]
                for message_id, blocks in self._streamed.items()
            },
            "accounted": {
                message_id: sorted(indexes) for message_id, indexes in self._accounted.items()
            },
            **self._tools.data(),
            "refusal": None if self._refusal is None else self._refusal.data(),
        }

    def _own_restore(self, state: dict[str, Any]) -> None:
        message_id = state["messageId"]
        self._message_id = None if message_id is None else str(message_id)
        self._streamed = newest(
            (
                (str(message_id), newest(map(_streamed_block, blocks), limit=RECENT_BLOCKS))
                for message_id, blocks in dict_of(state["streamed"]).items()
            ),
            limit=RECENT_MESSAGES,
        )
        self._accounted = newest(
            (
                (str(message_id), set(sorted({int(index) for index in indexes})[-RECENT_BLOCKS:]))
                for message_id, indexes in dict_of(state["accounted"]).items()
            ),
            limit=RECENT_MESSAGES,
        )
        self._tools = ToolCalls.of(state)
        self._refusal = Report.of(state["refusal"])

    def _on_event(self, event: dict[str, Any]) -> list[RunEvent]:
        self._saw_session(event.get("session_id"))
        kind = event.get("type")
        if kind == "system":
            return self._system(event)
        if kind == "stream_event":
            return self._stream_event(event)
        if kind == "assistant":
            return self._assistant(event)
        if kind == "user":
            return self._user(event)
        if kind == "result":
            return self._result(event)
        return [raw_event(event)]

    def _system(self, event: dict[str, Any]) -> list[RunEvent]:
        subtype = event.get("subtype")
        if subtype == "init":
            return []
        if subtype == "api_retry":
            kind = text_of(event.get("error"))
            status = status_of(event.get("error_status"))
            detail = ", ".join(
                part for part in (kind, f"status {status}" if status else "") if part
            )
            self._last_error = Report(
                ok=False,
                message=f"the API request failed ({detail or 'error'}); claude was retrying",
                code=ERROR_KINDS.get(kind) or classify_status(status),
            )
        return [raw_event(event)]

    def _stream_event(self, event: dict[str, Any]) -> list[RunEvent]:
        inner = dict_of(event.get("event"))
        kind = inner.get("type")
        if event.get("parent_tool_use_id"):
            return [raw_event(event)]  # a subagent's stream: not the run's answer
        message_id = id_of(event.get("api_message_id")) or self._message_id
        if kind == "message_start":
            message_id = id_of(dict_of(inner.get("message")).get("id")) or message_id
            self._message_id = message_id
            if message_id:
                # A retry streams the same message again from its start.
                remember(self._streamed, message_id, {}, limit=RECENT_MESSAGES)
                remember(self._accounted, message_id, set(), limit=RECENT_MESSAGES)
            return []
        if kind == "content_block_start":
            block = dict_of(inner.get("content_block"))
            if block.get("type") == "text":
                return self._streamed_text(message_id, inner, text_of(block.get("text")))
            return [] if block.get("type") in _QUIET_BLOCKS else [raw_event(event)]
        if kind == "content_block_delta":
            delta = dict_of(inner.get("delta"))
            if delta.get("type") == "text_delta":
                return self._streamed_text(message_id, inner, text_of(delta.get("text")))
            return [] if delta.get("type") in _QUIET_DELTAS else [raw_event(event)]
        if kind == "message_stop":
            return [raw_event(event)] if "abandoned_blocks" in event else []
        if kind == "error":
            error = dict_of(inner.get("error"))
            self._erred(error)
        return [] if kind in _QUIET_STREAM_EVENTS else [raw_event(event)]

    def _streamed_text(
        self, message_id: str | None, inner: dict[str, Any], text: str
    ) -> list[RunEvent]:
        if message_id is not None:
            index = int_of(inner.get("index"))
            blocks = self._streamed.get(message_id)
            if blocks is None:
                blocks = {}
                remember(self._streamed, message_id, blocks, limit=RECENT_MESSAGES)
            said = blocks.get(index, Fingerprint()).extended(text)
            remember(blocks, index, said, limit=RECENT_BLOCKS)
        return deltas(text)

    def _assistant(self, event: dict[str, Any]) -> list[RunEvent]:
        message = dict_of(event.get("message"))
        content = list_of(message.get("content"))
        if event.get("is_api_error_message") or (
            event.get("error") and message.get("model") == "<synthetic>"
        ):
            kind = text_of(event.get("error"))
            self._refusal = Report(
                ok=False,
                message=_joined_text(content),
                code=ERROR_KINDS.get(kind)
                or classify_status(status_of(event.get("api_error_status"))),
            )
            self._last_error = self._refusal
            return []
        parent = text_of(event.get("parent_tool_use_id")) or None
        message_id = id_of(message.get("id"))
        for item in content:  # an id no CLI gives makes the line raw, before any is kept
            block = dict_of(item)
            if block.get("type") in _TOOL_BLOCKS:
                id_of(block.get("id"))
                id_of(block.get("name"))
        events: list[RunEvent] = []
        unmapped: list[Any] = []
        for item in content:
            block = dict_of(item)
            block_type = block.get("type")
            if block_type == "text" and parent is None:
                events += deltas(self._unstreamed(message_id, text_of(block.get("text"))))
            elif block_type in _TOOL_BLOCKS:
                tool_id = text_of(block.get("id"))
                if tool_id and tool_id not in self._tools:
                    name, tool_input = text_of(block.get("name")), block.get("input")
                    events.append(
                        self._tool_started(tool_id, name, tool_input, parent_tool_id=parent)
                    )
            elif block_type not in ("thinking", "redacted_thinking"):
                unmapped.append(block)
        if unmapped:
            events.append(raw_event(event))
        return events

    def _unstreamed(self, message_id: str, text: str) -> str:
        """What of a finished text block its deltas did not already pass on."""
        streamed = self._streamed.get(message_id, {})
        accounted = self._accounted.get(message_id)
        if accounted is None:
            accounted = set()
            remember(self._accounted, message_id, accounted, limit=RECENT_MESSAGES)
        for index in sorted(streamed):
            if index not in accounted and streamed[index].begins(text):
                accounted.add(index)
                if len(accounted) > RECENT_BLOCKS:  # blocks come in order: the first gives way
                    accounted.remove(min(accounted))
                # Never looked at again (a later delta of the block is accounted for too).
                return text[streamed.pop(index).length :]
        return text

    def _user(self, event: dict[str, Any]) -> list[RunEvent]:
        content = dict_of(event.get("message")).get("content")
        parent = text_of(event.get("parent_tool_use_id")) or None
        events: list[RunEvent] = []
        unmapped = not isinstance(content, list)
        results = [dict_of(block) for block in list_of(content)]
        for block in results:  # an id no CLI gives makes the line raw, before any is forgotten
            id_of(block.get("tool_use_id"))
        for block in results:
            if block.get("type") != "tool_result":
                unmapped = True
                continue
            tool_id = text_of(block.get("tool_use_id"))
            events.append(
                self._tool_finished(
                    tool_id,
                    output=_result_text(block.get("content")),
                    is_error=block.get("is_error") is True,
                    parent_tool_id=parent,
                )
            )
        if unmapped:
            events.append(raw_event(event))
        return events

    def _result(self, event: dict[str, Any]) -> list[RunEvent]:
        events: list[RunEvent] = []
        usage = dict_of(event.get("usage"))
        if usage:
            counted = self._counted(_usage(usage))
            events += [counted] if counted.data["totalTokens"] else []
        if event.get("subtype") == "success" and event.get("is_error") is not True:
            self._answered(True)
            return events
        refusal = self._refusal
        reason = text_of(event.get("terminal_reason"))
        message = (
            (f"claude was interrupted ({reason})" if reason.startswith("aborted") else "")
            or text_of(event.get("result"))
            or "; ".join(text_of(e) for e in list_of(event.get("errors")) if text_of(e))
            or (refusal.message if refusal else "")
            or f"claude ended the run with {text_of(event.get('subtype')) or 'an error'}"
        )
        self._answered(False, message, self._result_code(event))
        return events

    def _result_code(self, event: dict[str, Any]) -> RunFailure | None:
        if text_of(event.get("terminal_reason")).startswith("aborted"):
            return RunFailure.CANCELLED
        return (
            ERROR_KINDS.get(text_of(event.get("api_error")))
            or classify_status(status_of(event.get("api_error_status")))
            or (self._refusal.code if self._refusal else None)
        )


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    # Anthropic counts cache reads and cache writes apart from input_tokens.
    uncached = int_of(usage.get("input_tokens"))
    cache_read = int_of(usage.get("cache_read_input_tokens"))
    cache_write = int_of(usage.get("cache_creation_input_tokens"))
    return token_usage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=int_of(usage.get("output_tokens")),
        cached_input_tokens=cache_read,
        cacheWriteInputTokens=cache_write,
    )


def _streamed_block(block: list[Any]) -> tuple[int, Fingerprint]:
    """A block's index and fingerprint as a checkpoint has them: ``[index, length, value]``, or
    ``[index, text]`` from a controller that kept the text (upgraded mid-run)."""
    if len(block) == 2:
        index, text = block
        return int(index), Fingerprint.of(str(text))
    index, length, value = block
    return int(index), Fingerprint.of_data(length, value)


def _joined_text(content: list[Any]) -> str:
    return "".join(text_of(dict_of(block).get("text")) for block in content)


def _result_text(content: object) -> str | None:
    """A tool_result's content as text: a string, or its text blocks (images named)."""
    if content is None:
        return None
    if isinstance(content, str):
        return content
    return blocks_text(content)
