"""RunPump: reads one run's CLI output from the VM's agent, maps it, and stores its events.

The vendor CLI runs as an agent exec. The pump reads that exec's events from the last one it
stored (``exec_cursor``), splits stdout into lines, has the provider's parser turn each line
into run events, and stores them with the new cursor in one transaction; readers are woken as
each batch lands. The exec's ``exit`` ends the run with exactly one ``run.completed`` or
``run.failed``. A broken event stream is read again from the cursor; a controller that
restarts starts a new pump at the stored cursor, so nothing the CLI printed is lost or doubled.
The pump is not use of the VM: it waits out a paused or hibernated VM rather than waking it.

Reading on at the cursor needs more than the cursor: how the next lines map, and how the run
ends, depend on what the parser learnt from the earlier ones (the text a message streamed, which
an ``assistant`` line repeats; the CLI's ``result``, which decides completed or failed at the
exit; tool names; the stderr tail). Those lines cannot be read again: the agent drops an exec's
events once they are read past, and keeping the whole output in the store would grow with it.
So with every cursor it stores, the pump stores its checkpoint (``StreamParser.checkpoint`` and
the stderr tail, a few KiB: a parser keeps what it needs later, not the lines) in the same
transaction, and a new pump restores it before it reads on: the re-attached parser is in the
state the stopped one was at that cursor. A checkpoint that cannot be read (written by another
version) is logged and the parser starts afresh, as before there were checkpoints.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal as signals
from collections.abc import Callable
from typing import Any

from hearth.control.execs import ExecEvent, ExecService, StreamSlept
from hearth.errors import HearthError, NotFound, VmEnded
from hearth.logging import get_logger
from hearth.runs import RunEvent, RunEventType, RunFailure, parser_for
from hearth.runs.states import RunStatus
from hearth.store import Store
from hearth.store.records import RunEventRecord, RunRecord

_log = get_logger("control.runs")

# A line longer than this is passed on cut (as ``raw``): no CLI writes one on purpose.
MAX_LINE_BYTES = 4 * 1024 * 1024
STDERR_TAIL_BYTES = 8 * 1024
# How often, and how far apart, a broken event stream is read again before the run fails.
RESUME_ATTEMPTS = 5
RESUME_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# The layout of a stored checkpoint; one of another is not restored.
CHECKPOINT_VERSION = 1


class LineSplitter:
    """Bytes in, complete lines out; what follows the last newline waits for more."""

    def __init__(self) -> None:
        self._pending = bytearray()

    @property
    def empty(self) -> bool:
        """Whether no partial line is held."""
        return not self._pending

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes (without their newlines)."""
        self._pending += data
        *lines, rest = bytes(self._pending).split(b"\n")
        self._pending = bytearray(rest)
        if len(self._pending) > MAX_LINE_BYTES:
            lines.append(bytes(self._pending[:MAX_LINE_BYTES]))
            self._pending.clear()
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        """The partial line left at the end of the output, if any."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest.decode("utf-8", errors="replace")] if rest.strip() else []


def chunk_bytes(data: dict[str, Any]) -> bytes:
    """An output event's bytes (text or base64 on the wire)."""
    text = str(data.get("data", ""))
    if data.get("encoding") == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


def signal_number(name: object) -> int | None:
    """``"SIGKILL"`` → 9; None for no signal or a name this host does not know."""
    if not isinstance(name, str):
        return None
    try:
        return int(signals.Signals[name])
    except KeyError:
        return None


class RunPump:
    """Moves one run's events from its exec into the store, until the run ends."""

    def __init__(
        self,
        run: RunRecord,
        *,
        store: Store,
        execs: ExecService,
        keep: int,
        notify: Callable[[str], None],
    ) -> None:
        self.run = run
        self._store = store
        self._execs = execs
        self._keep = keep
        self._notify = notify
        self._parser = parser_for(run.provider)
        self._lines = LineSplitter()
        self._stderr = bytearray()
        # What was read after the cursor: kept back until an exec event ends on a line's end,
        # so the cursor, the parser and the stored events always agree (see ``_take``).
        self._held_lines: list[str] = []
        self._held_stderr = bytearray()
        self._session_id = run.session_id
        # The last exec event whose output is fully stored: a partial line is not.
        self._cursor = run.exec_cursor
        self._next_seq = run.last_event_id + 1

    async def run_to_end(self) -> None:
        """Read and store until the exec's ``exit`` (or until it cannot be read any more)."""
        assert self.run.exec_id is not None
        await self._restore()
        attempts = 0
        while True:
            try:
                # Followed without waking the VM: a paused or hibernated one is waited for.
                async for event in self._execs.follow(
                    self.run.vm_id, self.run.exec_id, after=self._cursor
                ):
                    attempts = 0
                    if await self._take(event):
                        return
            except VmEnded as exc:
                await self._end_unread(f"the VM ended while the CLI ran: {exc.message}")
                return
            except StreamSlept:
                # Not the agent's failure: read again from the cursor, the held part too.
                self._lines, self._held_lines, self._held_stderr = LineSplitter(), [], bytearray()
                continue
            except NotFound as exc:
                await self._end_unread(f"the CLI's process is gone from the VM: {exc.message}")
                return
            except HearthError as exc:
                if attempts >= RESUME_ATTEMPTS:
                    await self._end_unread(f"the VM's agent stopped answering: {exc.message}")
                    return
                _log.info("run_stream_resumed", run_id=self.run.id, error=exc.message[:200])
                # Read again from the cursor: what was held after it is read again too.
                self._lines, self._held_lines, self._held_stderr = LineSplitter(), [], bytearray()
                await asyncio.sleep(RESUME_BACKOFF_S[attempts])
                attempts += 1

    def _checkpoint(self) -> str:
        """The parser's state and the stderr tail at the cursor, as stored with it."""
        state = {
            "version": CHECKPOINT_VERSION,
            "parser": self._parser.checkpoint(),
            "stderr": base64.b64encode(self._stderr).decode("ascii"),
        }
        return json.dumps(state, separators=(",", ":"))

    async def _restore(self) -> None:
        """Take up the checkpoint stored with the cursor, if there is one."""
        saved = await self._store.runs.checkpoint(self.run.id)
        if saved is None:
            return
        parser = parser_for(self.run.provider)
        try:
            state = json.loads(saved)
            if state["version"] != CHECKPOINT_VERSION:
                raise ValueError(f"checkpoint version {state['version']}")
            parser.restore(state["parser"])
            stderr = base64.b64decode(state["stderr"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            _log.warning("run_checkpoint_unreadable", run_id=self.run.id, error=str(exc)[:200])
            return
        self._parser, self._stderr = parser, bytearray(stderr)

    async def _take(self, event: ExecEvent) -> bool:
        """Store what one exec event adds; True once the run has ended.

        An event that ends inside a line is held (its lines not yet parsed) until one ends on
        a line's end; then all held is parsed and stored with that event as the cursor. A
        stream read again from the cursor (here, or by the next controller's pump) thus
        neither repeats an event nor splices a line to a copy of itself."""
        if event.type == "stdout":
            self._held_lines += self._lines.feed(chunk_bytes(event.data))
        elif event.type == "stderr":
            self._held_stderr += chunk_bytes(event.data)
        if event.type != "exit" and not self._lines.empty:
            return False
        if event.type == "exit":
            self._held_lines += self._lines.flush()
        events = [e for line in self._held_lines for e in self._parser.feed_line(line)]
        self._stderr += self._held_stderr
        del self._stderr[:-STDERR_TAIL_BYTES]
        self._held_lines, self._held_stderr = [], bytearray()
        if event.type != "exit":
            await self._store_events(events, cursor=event.id)
            return False
        final = await self._final_event(event.data)
        code = event.data.get("code")
        await self._finish(
            [*events, final],
            cursor=event.id,
            exit_code=code if isinstance(code, int) else None,
            exit_signal=signal_number(event.data.get("signal")),
        )
        return True

    async def _final_event(self, exit_data: dict[str, Any]) -> RunEvent:
        """The one terminal event: timed-out runs say so; cancelled ones too, unless the CLI
        had finished its answer when the cancel came (the parser's verdict otherwise)."""
        current = await self._store.runs.get(self.run.id)
        final = self._parser.finish(
            exit_code=exit_data.get("code"),
            signal=signal_number(exit_data.get("signal")),
            stderr_tail=self._stderr.decode("utf-8", errors="replace"),
        )
        if current.cancel_requested and final.type is not RunEventType.COMPLETED:
            return _failed(RunFailure.CANCELLED, "the run was cancelled")
        if exit_data.get("reason") == "timeout":
            return _failed(RunFailure.TIMEOUT, f"the run took longer than {current.timeout_s} s")
        return final

    def _records(self, events: list[RunEvent]) -> list[RunEventRecord]:
        records = []
        for event in events:
            records.append(
                RunEventRecord(
                    run_id=self.run.id,
                    seq=self._next_seq,
                    type=event.type.value,
                    data=json.dumps(event.data, separators=(",", ":")),
                )
            )
            self._next_seq += 1
        return records

    def _progress_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        session_id = self._parser.session_id
        if session_id and session_id != self._session_id:
            self._session_id = session_id
            fields["session_id"] = session_id[:256]
        if self._parser.usage is not None:
            fields["usage"] = json.dumps(self._parser.usage, separators=(",", ":"))
        return fields

    async def _store_events(self, events: list[RunEvent], *, cursor: int) -> None:
        self._cursor = cursor
        fields = self._progress_fields()
        await self._store.runs.append_events(
            self.run.id,
            self._records(events),
            exec_cursor=self._cursor,
            keep=self._keep,
            checkpoint=self._checkpoint(),
            **fields,
        )
        if events:
            self._notify(self.run.id)

    async def _finish(self, events: list[RunEvent], *, cursor: int, **extra: object) -> None:
        final = events[-1]
        self._cursor = cursor
        fields = self._progress_fields()
        if final.type is RunEventType.FAILED:
            fields["failure_code"] = str(final.data.get("code", RunFailure.CLI_CRASHED.value))
            fields["error_message"] = str(final.data.get("message", ""))[:2000]
        await self._store.runs.append_events(
            self.run.id,
            self._records(events),
            exec_cursor=cursor,
            keep=self._keep,
            checkpoint=None,  # the run has ended: nothing will read on
            **fields,
            **extra,
        )
        status = RunStatus.COMPLETED if final.type is RunEventType.COMPLETED else RunStatus.FAILED
        await self._store.runs.transition(self.run.id, RunStatus.RUNNING, status)
        self._notify(self.run.id)
        _log.info(
            "run_ended",
            run_id=self.run.id,
            vm_id=self.run.vm_id,
            status=status.value,
            failure=fields.get("failure_code"),
        )

    async def _end_unread(self, why: str) -> None:
        """End a run whose exec can no longer be read: the CLI's fate is unknown."""
        await self._finish([_failed(RunFailure.CLI_CRASHED, why)], cursor=self._cursor)

    async def abandon(self, why: str) -> None:
        """End the run ``cli_crashed`` after this pump failed (unless it has ended): its
        events numbered on from the last stored, whatever a failed write had counted."""
        current = await self._store.runs.get(self.run.id)
        if current.is_terminal:
            return
        self._next_seq = current.last_event_id + 1
        await self._finish([_failed(RunFailure.CLI_CRASHED, why)], cursor=current.exec_cursor)


def _failed(code: RunFailure, message: str) -> RunEvent:
    return RunEvent(type=RunEventType.FAILED, data={"code": code.value, "message": message})
