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
So with every cursor it stores, the pump stores its checkpoint (``StreamParser.checkpoint``, the
stderr tail and the start of a line the output has not ended yet: a parser keeps what it needs
later, not the lines, within ``hearth.runs.stream.MAX_CHECKPOINT_CHARS``) in the same
transaction, and a new pump restores it before it reads on: the re-attached parser is in the
state the stopped one was at that cursor. Every exec event is
stored at its own id, whether or not it ends on a line's end, so the pump holds nothing beyond
the cursor: the cursor keeps up with what the agent has sent (the agent keeps only a few MiB of
events a follower has read), and memory is bounded by the longest line (``MAX_LINE_BYTES``). A
checkpoint of an older layout is read as it was written; one that cannot be read is logged and
the parser starts afresh.

The terminal event and the run's move to ``completed`` or ``failed`` are one transaction
(``RunRepo.end``), so a run has exactly one terminal event, its last. A database that cannot be
reached for a while is waited out (``STORE_BACKOFF``): the pump then takes the run up again as
stored (row, cursor, checkpoint), as a new controller's would; meanwhile the CLI blocks on its
full pipe rather than lose output, and the run's timeout still bounds it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal as signals
from collections.abc import Callable
from typing import Any

from hearth.agent_output import GarbledOutput, output_bytes
from hearth.control.execs import ExecEvent, ExecService, StreamSlept
from hearth.errors import Conflict, HearthError, NotFound, VmEnded
from hearth.logging import get_logger
from hearth.runs import RunEvent, RunEventType, RunFailure, parser_for
from hearth.runs.events import failed
from hearth.runs.states import RunStatus
from hearth.store import Store
from hearth.store.outage import is_outage
from hearth.store.records import RunEventRecord, RunRecord
from hearth.vm.readiness import Backoff

_log = get_logger("control.runs")

# A line longer than this is passed on cut (as ``raw``): no CLI writes one on purpose.
MAX_LINE_BYTES = 4 * 1024 * 1024
STDERR_TAIL_BYTES = 8 * 1024
# How often, and how far apart, a broken event stream is read again before the run fails.
RESUME_ATTEMPTS = 5
RESUME_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# How far apart a database that cannot be reached is tried again (for as long as it lasts:
# the run is still running, and its CLI waits on its full pipe).
STORE_BACKOFF = Backoff(initial_s=0.5, factor=2.0, cap_s=30.0)
# The layout of a stored checkpoint; one of another is not restored. Version 1 had no partial
# line: it was stored only at an event that ended on a line's end.
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = frozenset({1, CHECKPOINT_VERSION})
TERMINAL_TYPES = {
    RunEventType.COMPLETED.value: RunStatus.COMPLETED,
    RunEventType.FAILED.value: RunStatus.FAILED,
}


class LineSplitter:
    """Bytes in, complete lines out; what follows the last newline waits for more."""

    def __init__(self, pending: bytes = b"") -> None:
        self._pending = bytearray(pending)

    @property
    def pending(self) -> bytes:
        """The partial line held: what followed the last newline (at most ``MAX_LINE_BYTES``)."""
        return bytes(self._pending)

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes (without their newlines)."""
        *ends, rest = data.split(b"\n")
        lines: list[bytes] = []
        for end in ends:
            self._pending += end
            lines.append(bytes(self._pending))
            self._pending.clear()
        self._pending += rest
        if len(self._pending) > MAX_LINE_BYTES:
            lines.append(bytes(self._pending[:MAX_LINE_BYTES]))
            self._pending.clear()
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        """The partial line left at the end of the output, if any."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest.decode("utf-8", errors="replace")] if rest.strip() else []


def signal_number(name: object) -> int | None:
    """``"SIGKILL"`` → 9; None for no signal or a name this host does not know."""
    if not isinstance(name, str):
        return None
    try:
        return int(signals.Signals[name])
    except KeyError:
        return None


class StoreOutage:
    """Waits, with ``STORE_BACKOFF``, between tries of a run's store writes that found the
    database unavailable; ``reset`` once one went through."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self.reset()

    def reset(self) -> None:
        """Start the delays over (the store answered)."""
        self._delays = STORE_BACKOFF.delays()

    async def wait(self, exc: BaseException, *, doing: str) -> None:
        """Log ``exc`` (the store's error while ``doing``) and wait before the next try."""
        delay = next(self._delays)
        _log.warning(
            "run_store_unavailable",
            run_id=self._run_id,
            doing=doing,
            error=str(exc)[:200],
            retry_in_s=delay,
        )
        await asyncio.sleep(delay)


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
        self._outage = StoreOutage(run.id)
        self._parser = parser_for(run.provider)
        self._lines = LineSplitter()
        self._stderr = bytearray()
        self._session_id = run.session_id
        # The last exec event whose output is stored: the parser, the partial line and the
        # stderr tail are always as they were after it (every event is stored at its own id).
        self._cursor = run.exec_cursor
        self._next_seq = run.last_event_id + 1
        self._saved: str | None = None  # the checkpoint stored with the cursor, if any
        # The run was ended while its CLI may run on, unread: its owner stops the CLI.
        self.cli_unread = False

    async def run_to_end(self) -> None:
        """Read and store until the exec's ``exit`` (or until it cannot be read any more).

        A store that cannot be reached is waited out: what was read but not stored is dropped
        and the run taken up again as stored, since the failed write may or may not have
        landed."""
        while True:
            try:
                if await self._restore():
                    return
                await self._read_to_end()
                return
            except Exception as exc:
                if not is_outage(exc):
                    raise
                await self._outage.wait(exc, doing="reading on")

    async def _read_to_end(self) -> None:
        assert self.run.exec_id is not None
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
                continue  # not the agent's failure: read on from the cursor
            except NotFound as exc:
                await self._end_unread(f"the CLI's process is gone from the VM: {exc.message}")
                return
            except GarbledOutput as exc:  # the agent's failure: reading again gives the same
                await self._end_unread(exc.message)
                self.cli_unread = True
                return
            except HearthError as exc:
                if attempts >= RESUME_ATTEMPTS:
                    await self._end_unread(f"the VM's agent stopped answering: {exc.message}")
                    return
                _log.info("run_stream_resumed", run_id=self.run.id, error=exc.message[:200])
                await asyncio.sleep(RESUME_BACKOFF_S[attempts])
                attempts += 1

    def _checkpoint(self) -> str:
        """The parser's state, the stderr tail and the partial line at the cursor, as stored
        with it."""
        state = {
            "version": CHECKPOINT_VERSION,
            "parser": self._parser.checkpoint(),
            "stderr": base64.b64encode(self._stderr).decode("ascii"),
            "partial": base64.b64encode(self._lines.pending).decode("ascii"),
        }
        return json.dumps(state, separators=(",", ":"))

    async def _restore(self) -> bool:
        """Take up the run as stored: its row, and the checkpoint stored with its cursor if
        there is one; True if it has ended (nothing to read)."""
        run = await self._store.runs.get(self.run.id)
        if run.is_terminal or await self._settle_stored_end(run):
            return True
        self._cursor, self._next_seq = run.exec_cursor, run.last_event_id + 1
        self._session_id = run.session_id
        # Afresh unless a readable checkpoint says otherwise.
        self._parser, self._lines, self._stderr = (
            parser_for(run.provider),
            LineSplitter(),
            bytearray(),
        )
        saved = self._saved = await self._store.runs.checkpoint(run.id)
        if saved is None:
            return False
        parser = parser_for(run.provider)
        try:
            state = json.loads(saved)
            if state["version"] not in READABLE_VERSIONS:
                raise ValueError(f"checkpoint version {state['version']}")
            parser.restore(state["parser"])
            stderr = base64.b64decode(state["stderr"], validate=True)
            partial = base64.b64decode(state.get("partial", ""), validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            _log.warning("run_checkpoint_unreadable", run_id=self.run.id, error=str(exc)[:200])
            return False
        self._parser, self._stderr = parser, bytearray(stderr[-STDERR_TAIL_BYTES:])
        self._lines = LineSplitter(partial[:MAX_LINE_BYTES])
        return False

    async def _settle_stored_end(self, run: RunRecord) -> bool:
        """Whether the run's last stored event is terminal: if so, the run is moved by it.

        A controller before ``RunRepo.end`` stored the terminal event and moved the status in
        two transactions; one stopped between them left a running run that had ended. Ending
        it again would add a second terminal event after the first."""
        if not run.last_event_id:
            return False
        last = await self._store.runs.events(run.id, after=run.last_event_id - 1, limit=1)
        if not last or last[0].type not in TERMINAL_TYPES:
            return False
        with contextlib.suppress(Conflict):  # moved meanwhile: ended either way
            await self._store.runs.transition(
                run.id, RunStatus.RUNNING, TERMINAL_TYPES[last[0].type]
            )
        _log.info("run_end_settled", run_id=run.id, terminal=last[0].type)
        self._notify(run.id)
        return True

    async def _take(self, event: ExecEvent) -> bool:
        """Store what one exec event adds, with the event as the cursor; True once the run has
        ended. A line the event leaves unfinished is stored in the checkpoint, not held back:
        a stream read again from the cursor (here, or by the next controller's pump) thus
        neither repeats an event nor splices a line to a copy of itself."""
        lines: list[str] = []
        if event.type == "stdout":
            lines = self._lines.feed(output_bytes(event.data))
        elif event.type == "stderr":
            self._stderr += output_bytes(event.data)
            del self._stderr[:-STDERR_TAIL_BYTES]
        elif event.type == "exit":
            lines = self._lines.flush()
        events = [e for line in lines for e in self._parser.feed_line(line)]
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
            return failed(RunFailure.CANCELLED, "the run was cancelled")
        if exit_data.get("reason") == "timeout":
            return failed(RunFailure.TIMEOUT, f"the run took longer than {current.timeout_s} s")
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
            fields["session_id"] = session_id  # resumable: short, no NUL (``runs.commands``)
        if self._parser.usage is not None:
            fields["usage"] = json.dumps(self._parser.usage, separators=(",", ":"))
        return fields

    async def _store_events(self, events: list[RunEvent], *, cursor: int) -> None:
        fields = self._progress_fields()
        checkpoint = self._checkpoint()
        await self._store.runs.append_events(
            self.run.id,
            self._records(events),
            exec_cursor=cursor,
            keep=self._keep,
            # Not sent again while it is as stored (lines that teach the parser nothing).
            checkpoint=None if checkpoint == self._saved else checkpoint,
            **fields,
        )
        self._cursor, self._saved = cursor, checkpoint
        self._outage.reset()
        if events:
            self._notify(self.run.id)

    async def _finish(self, events: list[RunEvent], *, cursor: int, **extra: object) -> None:
        """Store the run's last events (the terminal one last) and end it, in one write; a run
        that has ended meanwhile is left as it ended."""
        final = events[-1]
        fields = self._progress_fields()
        if final.type is RunEventType.FAILED:
            fields["failure_code"] = str(final.data.get("code", RunFailure.CLI_CRASHED.value))
            fields["error_message"] = str(final.data.get("message", ""))
        status = RunStatus.COMPLETED if final.type is RunEventType.COMPLETED else RunStatus.FAILED
        try:
            await self._store.runs.end(
                self.run.id,
                self._records(events),
                status=status,
                exec_cursor=cursor,
                keep=self._keep,
                **fields,
                **extra,
            )
        except Conflict:
            if not (await self._store.runs.get(self.run.id)).is_terminal:
                raise
            _log.info("run_already_ended", run_id=self.run.id, vm_id=self.run.vm_id)
            return
        self._cursor = cursor
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
        await self._finish([failed(RunFailure.CLI_CRASHED, why)], cursor=self._cursor)

    async def abandon(self, why: str) -> None:
        """End the run ``cli_crashed`` after this pump failed (unless it has ended): its
        events numbered on from the last stored, whatever a failed write had counted."""
        current = await self._store.runs.get(self.run.id)
        if current.is_terminal or await self._settle_stored_end(current):
            return
        self._next_seq = current.last_event_id + 1
        await self._finish([failed(RunFailure.CLI_CRASHED, why)], cursor=current.exec_cursor)
