"""What every CLI's stream parser shares: reading JSON lines, and the run's one terminal event.

A subclass maps one decoded JSON object at a time (``_on_event``) and records, as it reads,
what the CLI itself says about the end of the run (``_outcome``: its ``result`` or
``turn.completed``/``turn.failed``) and the latest error it reported on the way
(``_last_error``: a retry notice, an error event). ``finish`` then decides, in this order:

1. the CLI reported success and exited 0 → ``run.completed``;
2. otherwise ``run.failed``, its code taken from the first thing that names one: the CLI's own
   failure report (a code it gave, else its words), the latest error it reported, an exit
   status the CLI gives a fixed meaning, the failure its stderr names; else ``cli_crashed``;
3. the message is the CLI's own words (failure report, latest error, else stderr), prefixed
   with how the process ended when nothing named a cause; always scrubbed of secrets.

What a parser has learnt from the lines so far (its outcome, the text it passed on, tool names)
decides how it maps the next ones and how the run ends: ``checkpoint`` gives it as JSON data and
``restore`` takes it back into a new parser of the same CLI, so that a restarted controller
reads on as the stopped one would have. A subclass adds its own (``_own_checkpoint``,
``_own_restore``); what it keeps is what it needs later, not every line it read, and bounded
(``hearth.runs.recall``). A checkpoint is at most ``MAX_CHECKPOINT_CHARS`` as compact JSON. Past
that (an error message of megabytes; hundreds of ids of hundreds of characters, which no CLI
writes) the outcome's and latest error's messages are cut to ``LEAN_MESSAGE_CHARS``; if it is
still past, it keeps only the session, usage, outcome and latest error, none of the subclass's
own: a parser restored from it ends the run as the CLI said, but names no tool in a result and
may say a streamed text again.

A line is decoded by the strict decoder the agent uses (``hearth_agent.jsontext``): a line nested
too deep for the interpreter, or with a number past a double or past the interpreter's digit
limit, is an unparsable line like any other (``raw``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from hearth.runs.commands import resumable
from hearth.runs.events import (
    RunEvent,
    RunFailure,
    completed,
    failed,
    raw_line,
    tool_finished,
    tool_started,
    usage_event,
)
from hearth.runs.failures import (
    classify,
    exit_description,
    readable,
    scrub,
    stderr_cause,
)
from hearth.runs.recall import ToolCalls
from hearth_agent.jsontext import JsonTextError, decode_json

# No CLI counts past a signed 64-bit integer. A number beyond it (JSON allows any) is no count:
# the sum of a few such (input plus output tokens) could pass the interpreter's digit limit for
# int-to-text conversion, and the pump's ``json.dumps`` of the usage would then raise.
MAX_COUNT = 2**63 - 1
# The pump stores the checkpoint with every exec event; a real run's is a few KiB.
MAX_CHECKPOINT_CHARS = 64 * 1024
# The messages of a cut-down checkpoint: two, at up to twelve characters of JSON a character (an
# astral one, escaped), stay well under MAX_CHECKPOINT_CHARS.
LEAN_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class Report:
    """What the CLI itself said about the run or one of its errors."""

    ok: bool
    message: str = ""
    code: RunFailure | None = None  # when the CLI said it in a field rather than in words

    def data(self, limit: int | None = None) -> dict[str, Any]:
        """The report as JSON data (``of`` reads it back), its message cut to ``limit``."""
        return {"ok": self.ok, "message": self.message[:limit], "code": self.code}

    @classmethod
    def of(cls, data: object) -> Report | None:
        """The report ``data`` gave, or None for none."""
        if data is None:
            return None
        fields = dict_of(data)
        code = fields["code"]
        return cls(
            ok=bool(fields["ok"]),
            message=str(fields["message"]),
            code=None if code is None else RunFailure(code),
        )


class CliStream:
    """Base of the per-CLI parsers: line decoding, session id, usage, tool calls, terminal
    event. A subclass maps its CLI's lines; what they all do with what a line says (counts,
    an error on the way, the CLI's own verdict, a tool call's start and result) is here."""

    cli: ClassVar[str] = "cli"
    # Exit statuses the CLI documents with a fixed meaning.
    exit_codes: ClassVar[dict[int, RunFailure]] = {}

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.usage: dict[str, Any] | None = None
        self._outcome: Report | None = None
        self._last_error: Report | None = None
        self._tools = ToolCalls()  # tool id → tool name (a subclass checkpoints them its way)

    def feed_line(self, line: str) -> list[RunEvent]:
        """The events one stdout line adds: non-JSON or non-object lines pass on as ``raw``."""
        text = line.strip()
        if not text:
            return []
        try:
            decoded = decode_json(text.encode("utf-8", errors="surrogatepass"))
        except JsonTextError:
            return [raw_line(line.rstrip("\r\n"))]
        if not isinstance(decoded, dict):
            return [raw_line(line.rstrip("\r\n"))]
        try:
            return self._on_event(decoded)
        except (TypeError, ValueError, KeyError, AttributeError):
            # A line of a shape this parser does not expect (a field of another type in a
            # newer CLI) is passed on as it is: it must not end the run's stream.
            return [raw_line(line.rstrip("\r\n"))]

    def finish(self, *, exit_code: int | None, signal: int | None, stderr_tail: str) -> RunEvent:
        """The one terminal event (see the module docstring for how it is decided)."""
        outcome = self._outcome
        clean_exit = signal is None and exit_code in (0, None)
        if outcome is not None and outcome.ok and clean_exit:
            return completed(self.usage, self.session_id)
        how = exit_description(self.cli, exit_code=exit_code, signal=signal)
        if outcome is not None and outcome.ok:
            return failed(RunFailure.CLI_CRASHED, f"{how} after it had answered")
        if outcome is None:
            how = f"{how} before it reported a result"
        stderr_code, stderr_line = stderr_cause(stderr_tail)
        reports = [r for r in (outcome, self._last_error) if r is not None]
        code = next(
            (c for r in reports for c in (r.code, classify(r.message)) if c is not None), None
        )
        if code is None and exit_code is not None:
            code = self.exit_codes.get(exit_code)
        if code is None:
            code = stderr_code
        said = next((r.message for r in reports if r.message), stderr_line)
        if code is None:
            code = RunFailure.CLI_CRASHED
            said = f"{how}: {said}" if said else how
        elif not said:
            said = how
        return failed(code, scrub(readable(said)))

    def checkpoint(self) -> dict[str, Any]:
        """What this parser has learnt from the lines so far, as JSON data: at most
        ``MAX_CHECKPOINT_CHARS`` as compact JSON, cut down past it (see the module docstring)."""
        own = self._own_checkpoint()
        state = {**self._base_checkpoint(limit=None), **own}
        if _fits(state):
            return state
        state = {**self._base_checkpoint(limit=LEAN_MESSAGE_CHARS), **own}
        if _fits(state):
            return state
        return {**self._base_checkpoint(limit=LEAN_MESSAGE_CHARS), **type(self)()._own_checkpoint()}

    def _base_checkpoint(self, *, limit: int | None) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "usage": self.usage,
            "outcome": None if self._outcome is None else self._outcome.data(limit),
            "lastError": None if self._last_error is None else self._last_error.data(limit),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what ``checkpoint`` gave (KeyError, TypeError or ValueError for data it
        could not have given)."""
        session_id, usage = state["sessionId"], state["usage"]
        self.session_id = None
        self._saw_session(session_id)
        self.usage = None if usage is None else dict(usage)
        self._outcome = Report.of(state["outcome"])
        self._last_error = Report.of(state["lastError"])
        self._own_restore(state)

    def _own_checkpoint(self) -> dict[str, Any]:
        return {}

    def _own_restore(self, state: dict[str, Any]) -> None:
        pass

    def _on_event(self, event: dict[str, Any]) -> list[RunEvent]:
        raise NotImplementedError

    def _counted(self, usage: dict[str, Any]) -> RunEvent:
        """Take ``usage`` (normalised: ``token_usage``) as the run's latest counts."""
        self.usage = usage
        return usage_event(usage)

    def _erred(self, error: dict[str, Any]) -> None:
        """The CLI reported an error on the way (``error``'s ``message``): the latest."""
        self._last_error = Report(ok=False, message=text_of(error.get("message")))

    def _answered(self, ok: bool, message: str = "", code: RunFailure | None = None) -> None:
        """The CLI's own verdict on the run (its result, its turn's end)."""
        self._outcome = Report(ok=ok, message=message, code=code)

    def _tool_started(
        self, tool_id: str, name: str, tool_input: Any, *, parent_tool_id: str | None = None
    ) -> RunEvent:
        """A tool call began: remembered by its id with its name, for its result's event."""
        self._tools.started(tool_id, name)
        return tool_started(tool_id, name, tool_input, parent_tool_id=parent_tool_id)

    def _tool_finished(
        self,
        tool_id: str,
        *,
        output: str | None,
        is_error: bool,
        parent_tool_id: str | None = None,
    ) -> RunEvent:
        """A tool call ended, named as it started (``_tool_started``)."""
        return tool_finished(
            tool_id,
            self._tools.finished(tool_id),
            output=output,
            is_error=is_error,
            parent_tool_id=parent_tool_id,
        )

    def _saw_session(self, value: object) -> None:
        # Only an id a later run could resume is kept: the run ends saying it has no session
        # rather than storing text that may not fit the store (a NUL, an absurd length).
        if isinstance(value, str) and resumable(value):
            self.session_id = value


def _fits(state: dict[str, Any]) -> bool:
    return len(json.dumps(state, separators=(",", ":"))) <= MAX_CHECKPOINT_CHARS


def text_of(value: object) -> str:
    """A string field's value, or "" for anything else."""
    return value if isinstance(value, str) else ""


def dict_of(value: object) -> dict[str, Any]:
    """An object field's value, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def list_of(value: object) -> list[Any]:
    """An array field's value, or [] for anything else."""
    return value if isinstance(value, list) else []


def blocks_text(blocks: object) -> str:
    """Content blocks (a tool result's, as Anthropic's API and MCP both shape them) as text, one
    block a line: a text block's text, any other block named by its type (``[image]``)."""
    parts = []
    for block in list_of(blocks):
        block = dict_of(block)
        if block.get("type") == "text":
            parts.append(text_of(block.get("text")))
        else:
            parts.append(f"[{text_of(block.get('type')) or 'content'}]")
    return "\n".join(parts)


def int_of(value: object) -> int:
    """A count field's value (0 when absent, not a number, or past any count: see MAX_COUNT)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not -MAX_COUNT <= value <= MAX_COUNT:  # also false for infinity and NaN
        return 0
    return int(value)


def status_of(value: object) -> int | None:
    """An HTTP status field's value, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
