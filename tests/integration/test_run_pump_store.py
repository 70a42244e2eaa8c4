"""RunPump and RunService on a real store (SQLite and PostgreSQL) over the agent's own event
log (``EventLog``: what a follower has read more than its replay window past is dropped).

Output whose every event ends inside a line, read again after a break or by the next
controller's pump; a run an older controller ended in two writes and stopped between them; a
database that cannot be reached for a moment while a pump writes, or while a failed pump ends
its run; a kill after the cancel's grace for a run whose row is gone; output the agent sends
garbled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

import hearth.control.run_pump as run_pump
import hearth.control.runs as runs
from hearth.agent_client import AgentError
from hearth.config import Settings
from hearth.control.execs import ExecEvent
from hearth.control.run_pump import RunPump
from hearth.control.runs import RunService
from hearth.errors import Conflict
from hearth.runs.claude import ClaudeStream
from hearth.runs.states import RunStatus
from hearth.store import Store
from hearth.store.records import RunEventRecord, RunRecord
from hearth.vm.readiness import Backoff
from hearth_agent.errors import ExecEventsGone
from hearth_agent.exec_events import EventLog, EventType
from hearth_agent.wire import Provider
from tests.integration.run_fixtures import ANSWER
from tests.integration.run_lines import answer_lines
from tests.integration.store_fixtures import *  # noqa: F403

KEEP = 100
REPLAY_BYTES = 64 * 1024  # the agent's is 4 MiB; the output below is scaled to this one
OUTAGE_STATEMENTS = 4


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_pump, "RESUME_BACKOFF_S", (0.0,) * run_pump.RESUME_ATTEMPTS)
    backoff = Backoff(initial_s=0.01, cap_s=0.05)
    monkeypatch.setattr(run_pump, "STORE_BACKOFF", backoff, raising=False)


class AgentExec:
    """One exec as its VM's agent serves it (its own ``EventLog``), followed by the pump over
    a stream that breaks once after ``breaks_after`` events or hangs there (``hangs_after``);
    a stream that ends without the exit raises, as the agent client does. ``at_event`` runs a
    callback before the event of that index is handed on; signals are recorded with the run's
    status when they came."""

    def __init__(
        self,
        chunks: list[str] | list[str | dict[str, Any]],
        *,
        breaks_after: int | None = None,
        hangs_after: int | None = None,
    ) -> None:
        self.log = EventLog(buffer_bytes=64 * 1024 * 1024, replay_bytes=REPLAY_BYTES)
        for chunk in chunks:  # text, or an event's payload as the agent sends it
            self.log.append(EventType.STDOUT, {"data": chunk} if isinstance(chunk, str) else chunk)
        self.log.append(EventType.EXIT, {"code": 0, "signal": None, "reason": "exited"})
        self.breaks_after, self.hangs_after = breaks_after, hangs_after
        self.hanging = asyncio.Event()
        self.at_event: dict[int, Callable[[], None]] = {}
        self.reads_after: list[int] = []
        self.signals: list[tuple[str, RunStatus]] = []
        self.store: Store | None = None
        self.run_id = ""

    async def follow(self, vm_id: str, exec_id: str, *, after: int = 0) -> AsyncIterator[ExecEvent]:
        self.reads_after.append(after)
        try:
            events = self.log.follow(after, keepalive_s=0.0)
        except ExecEventsGone as exc:
            raise AgentError(exc.message) from exc
        for count, sent in enumerate(e for e in events if e is not None):
            if count == self.breaks_after:
                self.breaks_after = None
                raise AgentError("the stream broke")
            if count == self.hangs_after:
                self.hanging.set()
                await asyncio.Event().wait()
            if count in self.at_event:
                self.at_event.pop(count)()
            yield ExecEvent(sent.id, sent.type.value, dict(sent.payload))
            if sent.type is EventType.EXIT:
                return
        raise AgentError(f"the event stream of exec {exec_id} ended early")

    async def kill_once_awake(self, vm_id: str, exec_id: str, signal: str) -> dict[str, Any]:
        assert self.store is not None
        self.signals.append((signal, (await self.store.runs.get(self.run_id)).status))
        return {}


@contextmanager
def listening(store: Store, listener: Callable[..., None]) -> Iterator[None]:
    """``listener`` called with each statement ``store`` sends, before it is sent."""
    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", listener)


class Database:
    """Makes the next statements of ``store`` fail as a dropped connection does: an outage
    that lasts a given number of tries, however slow the machine."""

    def __init__(self, store: Store, *, only: str = "") -> None:
        self.failing = 0  # statements still to fail (those that start with ``only``)
        self.refused = 0  # statements failed

        def fail(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if self.failing and statement.startswith(only):
                self.failing -= 1
                self.refused += 1
                raise OperationalError("statement", {}, ConnectionResetError("server closed"))

        self._fail, self._store = fail, store

    @contextmanager
    def watched(self) -> Iterator[Database]:
        with listening(self._store, self._fail):
            yield self

    def go_down(self) -> None:
        self.failing = OUTAGE_STATEMENTS


def answer_cut_mid_line() -> list[str]:
    """The CLI's answer amid blank-looking padding (lines of spaces, no events), several
    replay windows long, cut so that no event but the last ends on a line's end."""
    pad = " " * 3001 + "\n"
    text = "".join(pad * 5 + line + "\n" for line in answer_lines("claude_code"))
    chunks = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    assert not any(chunk.endswith("\n") for chunk in chunks[:-1])
    assert len(text) > 2 * REPLAY_BYTES
    return chunks


async def running_run(store: Store) -> RunRecord:
    """A run whose CLI runs, as ``RunService.start`` leaves it."""
    user = await store.users.ensure("ann")
    new = RunRecord(user_id=user.id, vm_id="vm-1", provider=Provider.CLAUDE_CODE, timeout_s=60)
    run = await store.runs.insert(new)
    await store.runs.transition(run.id, RunStatus.STARTING, RunStatus.RUNNING, exec_id="exec-1")
    started = RunEventRecord(run_id=run.id, seq=1, type="run.started", data="{}")
    await store.runs.append_events(run.id, [started], exec_cursor=0, keep=KEEP)
    return await store.runs.get(run.id)


async def pump(store: Store, run_id: str, agent: AgentExec) -> RunPump:
    """A pump from the run's stored row, as a (re)started controller makes one."""
    run = await store.runs.get(run_id)
    return RunPump(run, store=store, execs=agent, keep=KEEP, notify=lambda _: None)  # type: ignore[arg-type]


def service(store: Store, agent: AgentExec, run_id: str) -> RunService:
    agent.store, agent.run_id = store, run_id
    settings = Settings(run_events_keep=KEEP)
    return RunService(settings=settings, store=store, vms=None, execs=agent)  # type: ignore[arg-type]


async def told(store: Store, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, json.loads(e.data)) for e in await store.runs.events(run_id, after=0)]


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(data["text"] for kind, data in events if kind == "message.delta")


async def assert_read_as_whole(store: Store, run_id: str, chunks: list[str]) -> None:
    """The run's events are those of a run of the same output read without a break: each
    line once, none spliced to a copy of itself, one terminal event, last."""
    whole = await running_run(store)
    await (await pump(store, whole.id, AgentExec(chunks))).run_to_end()
    events, expected = await told(store, run_id), await told(store, whole.id)
    assert events == expected
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "run.completed", events[-1]
    assert kinds.count("run.completed") + kinds.count("run.failed") == 1, kinds
    assert text_of(events) == ANSWER


async def test_output_that_never_ends_an_event_on_a_line_end_reads_on_after_a_break(
    store: Store,
) -> None:
    # The pump held such output and kept its cursor at 0 until an event ended on a newline;
    # the agent dropped what the pump had read past its replay window, so the stream read
    # again after the break was "gone" and the run failed cli_crashed.
    run = await running_run(store)
    agent = AgentExec(answer_cut_mid_line(), breaks_after=30)
    await (await pump(store, run.id, agent)).run_to_end()
    assert agent.reads_after == [0, 30]
    await assert_read_as_whole(store, run.id, answer_cut_mid_line())
    assert (await store.runs.get(run.id)).status is RunStatus.COMPLETED


async def test_the_next_controllers_pump_reads_on_inside_a_line_from_the_stored_cursor(
    store: Store,
) -> None:
    run = await running_run(store)
    chunks = answer_cut_mid_line()
    first_agent = AgentExec(chunks, hangs_after=30)
    first = asyncio.create_task((await pump(store, run.id, first_agent)).run_to_end())
    await first_agent.hanging.wait()
    first.cancel()  # the controller ends
    await asyncio.gather(first, return_exceptions=True)
    assert (await store.runs.get(run.id)).exec_cursor == 30  # every event stored at its id
    agent = AgentExec(chunks)
    agent.log = first_agent.log  # the same exec, under the same agent
    await (await pump(store, run.id, agent)).run_to_end()
    assert agent.reads_after == [30]
    await assert_read_as_whole(store, run.id, chunks)


async def test_a_checkpoint_of_the_layout_before_partial_lines_still_reads_on(
    store: Store,
) -> None:
    # A controller upgraded while a run ran finds the checkpoint its predecessor stored.
    lines = answer_lines("claude_code")
    whole_at = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "assistant")
    chunks = [line + "\n" for line in lines]
    run = await running_run(store)
    first_agent = AgentExec(chunks, hangs_after=whole_at)
    first = asyncio.create_task((await pump(store, run.id, first_agent)).run_to_end())
    await first_agent.hanging.wait()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    saved = json.loads(await store.runs.checkpoint(run.id) or "{}")
    assert saved.pop("partial") == ""
    old = json.dumps({**saved, "version": 1})
    stored = await store.runs.get(run.id)
    await store.runs.append_events(
        run.id, [], exec_cursor=stored.exec_cursor, keep=KEEP, checkpoint=old
    )
    agent = AgentExec(chunks)
    agent.log = first_agent.log
    await (await pump(store, run.id, agent)).run_to_end()
    await assert_read_as_whole(store, run.id, chunks)  # the streamed text not said again


async def test_a_run_an_older_controller_ended_but_left_running_gets_no_second_end(
    store: Store,
) -> None:
    # That controller stored the final events (cursor at the exit), then stopped before it
    # moved the status: the next one's pump found the exit read and appended run.failed.
    run = await running_run(store)
    agent = AgentExec(["\n".join(answer_lines("claude_code")) + "\n"])
    completed = RunEventRecord(run_id=run.id, seq=2, type="run.completed", data="{}")
    await store.runs.append_events(run.id, [completed], exec_cursor=2, keep=KEEP, exit_code=0)
    agent.log.read(2)  # the exit was read past
    await (await pump(store, run.id, agent)).run_to_end()
    assert [kind for kind, _ in await told(store, run.id)] == ["run.started", "run.completed"]
    assert (await store.runs.get(run.id)).status is RunStatus.COMPLETED


async def test_a_database_outage_while_the_pump_writes_is_waited_out(store: Store) -> None:
    # The store's error "crashed" the pump, the abandon could not be written either, the CLI
    # was killed anyway, and the run stayed "running" with no pump until a restart.
    run = await running_run(store)
    agent = AgentExec(answer_cut_mid_line())
    runs_service = service(store, agent, run.id)
    with Database(store).watched() as database:
        agent.at_event[5] = database.go_down
        runs_service._attach(run)
        await asyncio.wait_for(runs_service.wait_idle(), 20)
    assert database.refused == OUTAGE_STATEMENTS
    await assert_read_as_whole(store, run.id, answer_cut_mid_line())
    assert (await store.runs.get(run.id)).status is RunStatus.COMPLETED
    assert agent.signals == []


async def test_a_final_write_cut_short_leaves_the_run_running_and_it_ends_once(
    store: Store,
) -> None:
    # The terminal event and the status were two writes: one that failed between them left a
    # run "running" with its end stored, which the next pump ended a second time.
    run = await running_run(store)
    chunks = answer_cut_mid_line()
    agent = AgentExec(chunks)
    runs_service = service(store, agent, run.id)
    with Database(store, only="INSERT INTO run_events").watched() as database:
        agent.at_event[len(chunks)] = database.go_down  # the exit: the events after the move
        runs_service._attach(run)
        await asyncio.wait_for(runs_service.wait_idle(), 20)
    assert database.refused == OUTAGE_STATEMENTS
    await assert_read_as_whole(store, run.id, chunks)
    assert (await store.runs.get(run.id)).status is RunStatus.COMPLETED


async def test_a_run_that_has_ended_cannot_be_ended_again(store: Store) -> None:
    run = await running_run(store)
    completed = RunEventRecord(run_id=run.id, seq=2, type="run.completed", data="{}")
    await store.runs.end(run.id, [completed], status=RunStatus.COMPLETED, exec_cursor=9, keep=KEEP)
    failed = RunEventRecord(run_id=run.id, seq=3, type="run.failed", data="{}")
    with pytest.raises(Conflict):
        await store.runs.end(run.id, [failed], status=RunStatus.FAILED, exec_cursor=9, keep=KEEP)
    assert [kind for kind, _ in await told(store, run.id)] == ["run.started", "run.completed"]
    assert (await store.runs.get(run.id)).status is RunStatus.COMPLETED


class FailingStream(ClaudeStream):
    """A parser with a bug, which fails as the database goes down (``outage``)."""

    def __init__(self, outage: Callable[[], None]) -> None:
        super().__init__()
        self.outage = outage

    def feed_line(self, line: str) -> list[Any]:
        if "assistant" in line:
            self.outage()
            raise ZeroDivisionError("a bug in the parser")
        return super().feed_line(line)


async def test_a_failed_pump_ends_its_run_once_the_database_answers_then_kills_the_cli(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await running_run(store)
    agent = AgentExec(["\n".join(answer_lines("claude_code")) + "\n"])
    runs_service = service(store, agent, run.id)
    with Database(store).watched() as database:
        failing = FailingStream(database.go_down)
        monkeypatch.setattr(run_pump, "parser_for", lambda provider: failing)
        runs_service._attach(run)
        await asyncio.wait_for(runs_service.wait_idle(), 20)
        async with asyncio.timeout(5):
            while not agent.signals:
                await asyncio.sleep(0.01)
    assert database.refused == OUTAGE_STATEMENTS
    ended = await store.runs.get(run.id)
    assert (ended.status, ended.failure_code) == (RunStatus.FAILED, "cli_crashed")
    assert agent.signals == [("SIGKILL", RunStatus.FAILED)]  # killed only once that was stored


async def test_a_kill_after_the_grace_for_a_run_whose_row_is_gone_sends_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row's NotFound escaped the background task.
    monkeypatch.setattr(runs, "CANCEL_GRACE_S", 0.0)
    agent = AgentExec([])
    gone = RunRecord(user_id="ann", vm_id="vm-1", provider=Provider.CLAUDE_CODE, timeout_s=60)
    await service(store, agent, gone.id)._kill_after_grace(gone)
    assert agent.signals == []


@pytest.mark.parametrize(
    "garbled",
    [
        {"data": "bm90IGJhc2U2N", "encoding": "base64"},  # cut short: no padding fits it
        {"data": "aGVsbG8=!!", "encoding": "base64"},  # a character base64 has not
        {"data": "\ud800 a lone surrogate"},  # text no UTF-8 encodes
    ],
)
async def test_output_the_agent_sends_garbled_ends_the_run_as_the_agents_failure(
    store: Store, garbled: dict[str, Any]
) -> None:
    # The guest's root may replace its agent. chunk_bytes raised binascii.Error out of the
    # pump: "run_pump_crashed" with a traceback, the run ended as "Hearth failed to read the
    # CLI's output (an internal error…)" and the CLI was killed; base64 with a stray character
    # lost it silently.
    run = await running_run(store)
    lines = answer_lines("claude_code")
    agent = AgentExec([lines[0] + "\n", garbled, "\n".join(lines[1:]) + "\n"])
    runs_service = service(store, agent, run.id)
    runs_service._attach(run)
    await asyncio.wait_for(runs_service.wait_idle(), 20)
    async with asyncio.timeout(5):
        while not agent.signals:
            await asyncio.sleep(0.01)
    ended = await store.runs.get(run.id)
    assert (ended.status, ended.failure_code) == (RunStatus.FAILED, "cli_crashed")
    message = ended.error_message or ""
    assert message.startswith("the VM's agent sent output that is no bytes ("), message
    events = await told(store, run.id)
    assert events[-1] == ("run.failed", {"code": "cli_crashed", "message": message})
    assert [kind for kind, _ in events].count("run.failed") == 1
    assert (await store.runs.get(run.id)).exec_cursor == 1  # the first line stored, read past
    # The CLI did nothing wrong, but nobody would read it: stopped once the end is stored.
    assert agent.signals == [("SIGKILL", RunStatus.FAILED)]


def run_event_writes(sent: list[tuple[str, str]]) -> Callable[..., None]:
    """A statement listener (``listening``) that adds to ``sent`` each write of ``run_events``:
    its verb and its parameters, as sent."""

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith(("INSERT INTO run_events", "DELETE FROM run_events")):
            sent.append((statement.split(" ")[0], repr(parameters)))

    return seen


def checkpoints_written(sent: list[tuple[str, str]]) -> int:
    return sum(1 for verb, parameters in sent if verb == "INSERT" and "checkpoint" in parameters)


async def test_a_checkpoint_that_has_not_changed_is_not_written_again(store: Store) -> None:
    # Every stored cursor deleted and inserted the checkpoint row, the same as it was.
    run = await running_run(store)
    first = answer_lines("claude_code")[0] + "\n"
    pad = " " * 10 + "\n"  # lines of nothing: the parser learns nothing from them
    # The first line, three pads, then a line cut across two events (the partial changes).
    agent = AgentExec([first, pad, pad, pad, '{"type": "x"', ', "y": 1}\n'], hangs_after=4)
    sent: list[tuple[str, str]] = []
    with listening(store, run_event_writes(sent)):
        reading = asyncio.create_task((await pump(store, run.id, agent)).run_to_end())
        await agent.hanging.wait()
        stored = await store.runs.get(run.id)
        assert stored.exec_cursor == 4  # the pads' cursors stored...
        assert checkpoints_written(sent) == 1  # ...with no checkpoint written again
        assert [verb for verb, _ in sent] == ["DELETE", "INSERT"]  # the first line's
        saved = json.loads(await store.runs.checkpoint(run.id) or "{}")
        assert saved["partial"] == ""
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    agent = AgentExec([first, pad, pad, pad, '{"type": "x"', ', "y": 1}\n'])
    agent.log.read(4)  # the same exec: what the first pump read past is dropped
    sent.clear()
    with listening(store, run_event_writes(sent)):
        await (await pump(store, run.id, agent)).run_to_end()
    assert agent.reads_after == [4]
    assert checkpoints_written(sent) == 2  # each change of the partial line written
    assert (await store.runs.checkpoint(run.id)) is None  # gone with the run's end
    kinds = [kind for kind, _ in await told(store, run.id)]
    assert kinds == ["run.started", "raw", "run.failed"], kinds
