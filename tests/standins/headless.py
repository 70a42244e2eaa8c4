"""Reading a vendor CLI's headless JSON output, just enough for the stand-in tests to assert on.

Each CLI prints one JSON object per line, in a shape of its own:

* claude ``-p --output-format stream-json --verbose --include-partial-messages``: ``system``
  (``init``, with ``session_id``), ``stream_event`` (the API's events: text arrives as
  ``content_block_delta``/``text_delta``), ``assistant``/``user`` messages (tool_use and
  tool_result blocks), and one ``result`` (``result`` text, ``usage``, ``is_error``).
* codex ``exec --json``: ``thread.started`` (``thread_id``), ``turn.started``, ``item.started``/
  ``item.completed`` (``agent_message``, ``command_execution``, ``error``), ``error``, and
  ``turn.completed`` (``usage``) or ``turn.failed``. It streams no text deltas.
* gemini ``-p --output-format stream-json``: ``init`` (``session_id``), ``message`` (assistant
  text deltas with ``delta: true``), ``tool_use``/``tool_result``, and one ``result``
  (``status``, ``stats`` with per-model token counts, ``error``).

These helpers are not Hearth's parsers (those live in the product); they read only what the
tests check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from hearth_agent.wire import Provider

Event = Mapping[str, object]


def _of_type(events: Sequence[Event], kind: str) -> list[Event]:
    return [e for e in events if e.get("type") == kind]


def _dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def session_id(provider: Provider, events: Sequence[Event]) -> str | None:
    """The session id the run printed (what resuming it takes)."""
    kind, key = {
        Provider.CLAUDE_CODE: ("system", "session_id"),
        Provider.CODEX: ("thread.started", "thread_id"),
        Provider.GEMINI_CLI: ("init", "session_id"),
    }[provider]
    for event in _of_type(events, kind):
        if isinstance(event.get(key), str):
            return str(event[key])
    return None


def answer_begun(provider: Provider, event: Event) -> bool:
    """Whether ``event`` shows the model's answer under way (codex prints no text deltas: its
    turn has started)."""
    kind = event.get("type")
    if provider is Provider.CLAUDE_CODE:
        inner = _dict(event.get("event"))
        return kind == "stream_event" and inner.get("type") == "content_block_delta"
    if provider is Provider.CODEX:
        return kind == "turn.started"
    return kind == "message" and event.get("role") == "assistant"


def streamed_text(provider: Provider, events: Sequence[Event]) -> str:
    """The model's text as it streamed out, every turn's; codex streams none, so its
    finished agent messages stand in."""
    if provider is Provider.CLAUDE_CODE:
        pieces = []
        for event in _of_type(events, "stream_event"):
            delta = _dict(_dict(event.get("event")).get("delta"))
            if delta.get("type") == "text_delta":
                pieces.append(str(delta.get("text", "")))
        return "".join(pieces)
    if provider is Provider.CODEX:
        return "".join(
            str(item.get("text", ""))
            for item in (_dict(e.get("item")) for e in _of_type(events, "item.completed"))
            if item.get("type") == "agent_message"
        )
    return "".join(
        str(e.get("content", ""))
        for e in _of_type(events, "message")
        if e.get("role") == "assistant"
    )


def final_text(provider: Provider, events: Sequence[Event]) -> str | None:
    """The last answer of the run: claude's ``result``, codex's last agent message, gemini's
    assistant text after its last tool result."""
    if provider is Provider.CLAUDE_CODE:
        results = _of_type(events, "result")
        return str(results[-1].get("result")) if results else None
    if provider is Provider.CODEX:
        messages = [
            item
            for item in (_dict(e.get("item")) for e in _of_type(events, "item.completed"))
            if item.get("type") == "agent_message"
        ]
        return str(messages[-1].get("text")) if messages else None
    last_tool = max((i for i, e in enumerate(events) if e.get("type") == "tool_result"), default=-1)
    return streamed_text(provider, events[last_tool + 1 :]) or None


def usages(provider: Provider, events: Sequence[Event]) -> list[tuple[int, int]]:
    """``(input_tokens, output_tokens)`` the run reported at its end: claude's and codex's
    total, gemini's per model (its model router's own call is counted apart)."""
    if provider is Provider.CLAUDE_CODE:
        return [_pair(_dict(e.get("usage"))) for e in _of_type(events, "result")]
    if provider is Provider.CODEX:
        return [_pair(_dict(e.get("usage"))) for e in _of_type(events, "turn.completed")]
    pairs = []
    for event in _of_type(events, "result"):
        for stats in _dict(_dict(event.get("stats")).get("models")).values():
            pairs.append(_pair(_dict(stats)))
    return pairs


def _pair(usage: Mapping[str, object]) -> tuple[int, int]:
    return int(str(usage.get("input_tokens", 0))), int(str(usage.get("output_tokens", 0)))


def tool_calls(provider: Provider, events: Sequence[Event]) -> list[str]:
    """The tools the run called, by name (codex: the commands it ran)."""
    if provider is Provider.CLAUDE_CODE:
        return [
            str(block.get("name"))
            for event in _of_type(events, "assistant")
            for block in _blocks(event)
            if block.get("type") == "tool_use"
        ]
    if provider is Provider.CODEX:
        return [
            str(item.get("command"))
            for item in (_dict(e.get("item")) for e in _of_type(events, "item.completed"))
            if item.get("type") == "command_execution"
        ]
    return [str(e.get("tool_name")) for e in _of_type(events, "tool_use")]


def tool_results(provider: Provider, events: Sequence[Event]) -> list[str]:
    """What the run's tools returned, as text."""
    if provider is Provider.CLAUDE_CODE:
        return [
            json.dumps(block.get("content"))
            for event in _of_type(events, "user")
            for block in _blocks(event)
            if block.get("type") == "tool_result"
        ]
    if provider is Provider.CODEX:
        return [
            str(item.get("aggregated_output"))
            for item in (_dict(e.get("item")) for e in _of_type(events, "item.completed"))
            if item.get("type") == "command_execution"
        ]
    return [str(e.get("status")) for e in _of_type(events, "tool_result")]


def _blocks(event: Event) -> list[Mapping[str, object]]:
    content = _dict(event.get("message")).get("content")
    return [_dict(b) for b in content] if isinstance(content, list) else []


def error_text(provider: Provider, events: Sequence[Event]) -> str:
    """Every error message the run printed, one per line."""
    if provider is Provider.CLAUDE_CODE:
        return "\n".join(
            str(e.get("result")) for e in _of_type(events, "result") if e.get("is_error")
        )
    if provider is Provider.CODEX:
        lines = [str(e.get("message")) for e in _of_type(events, "error")]
        lines += [
            str(_dict(e.get("error")).get("message")) for e in _of_type(events, "turn.failed")
        ]
        return "\n".join(lines)
    return "\n".join(
        str(_dict(e.get("error")).get("message"))
        for e in _of_type(events, "result")
        if e.get("status") == "error"
    )
