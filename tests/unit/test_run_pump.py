"""RunPump over an exec stream cut inside a line: read again by the same pump, or by the next
controller's from the stored cursor, every line becomes its events once, in order, never
spliced to a copy of itself. The store is a stand-in that keeps the run's row and what the pump
writes (the store's own transaction is tested in the store's tests)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import hearth.control.run_pump as run_pump
from hearth.agent_client import AgentError
from hearth.control.execs import ExecEvent, StreamSlept
from hearth.control.run_pump import RunPump
from hearth.runs.states import RunStatus
from hearth.store.records import RunEventRecord, RunRecord
from hearth_agent.wire import Provider
from tests.integration.run_lines import answer_lines


def said(text: str) -> str:
    """A line of Claude Code's stream-json: the assistant says ``text``."""
    message = {"content": [{"type": "text", "text": text}]}
    return json.dumps({"type": "assistant", "message": message})


# Two lines, the second cut across two output events, then the exit.
FIRST, SECOND = said("HELLO"), said("WORLD")
OUTPUT = [
    ExecEvent(1, "stdout", {"data": FIRST + "\n" + SECOND[:20]}),
    ExecEvent(2, "stdout", {"data": SECOND[20:] + "\n"}),
    ExecEvent(3, "exit", {"code": 0, "signal": None, "reason": "exited"}),
]


class Exec:
    """The exec's event stream: it breaks once before event ``breaks_at``, or stops there
    for good (``hangs_at``: the controller is ended meanwhile)."""

    def __init__(
        self,
        *,
        breaks_at: int | None = None,
        hangs_at: int | None = None,
        output: list[ExecEvent] = OUTPUT,
        sleeps_at: int | None = None,
        sleeps: int = 0,
    ) -> None:
        self.breaks_at = breaks_at
        self.hangs_at = hangs_at
        self.hanging = asyncio.Event()
        self.output = output
        # Before event ``sleeps_at``, the VM sleeps ``sleeps`` times (each breaks the stream).
        self.sleeps_at, self.sleeps = sleeps_at, sleeps
        self.reads_after: list[int] = []

    async def follow(self, vm_id: str, exec_id: str, *, after: int = 0) -> AsyncIterator[ExecEvent]:
        self.reads_after.append(after)
        for event in self.output:
            if event.id <= after:
                continue
            if event.id == self.sleeps_at and self.sleeps:
                self.sleeps -= 1
                raise StreamSlept("the VM slept")
            if event.id == self.breaks_at:
                self.breaks_at = None
                raise AgentError("the stream broke")
            if event.id == self.hangs_at:
                self.hanging.set()
                await asyncio.Event().wait()
            yield event


class Runs:
    """The run's row and its stored events, written as the store writes them."""

    def __init__(self, run: RunRecord) -> None:
        self.run = run
        self.stored: list[RunEventRecord] = []
        self.saved: str | None = None  # the pump's checkpoint at the cursor

    async def append_events(
        self,
        run_id: str,
        events: list[RunEventRecord],
        *,
        exec_cursor: int,
        checkpoint: str | None = None,
        **_: Any,
    ) -> None:
        self.stored += events
        if checkpoint is not None:  # None: the one stored is left as it is
            self.saved = checkpoint
        last = self.stored[-1].seq if self.stored else 0
        self.run = dataclasses.replace(self.run, exec_cursor=exec_cursor, last_event_id=last)

    async def end(
        self,
        run_id: str,
        events: list[RunEventRecord],
        *,
        status: RunStatus,
        exec_cursor: int,
        **_: Any,
    ) -> None:
        await self.append_events(run_id, events, exec_cursor=exec_cursor)
        self.run, self.saved = dataclasses.replace(self.run, status=status), None

    async def events(self, run_id: str, *, after: int, limit: int = 500) -> list[RunEventRecord]:
        return [e for e in self.stored if e.seq > after][:limit]

    async def checkpoint(self, run_id: str) -> str | None:
        return self.saved

    async def get(self, run_id: str) -> RunRecord:
        return self.run

    async def transition(self, *args: Any, **fields: Any) -> RunRecord:
        return self.run


@dataclasses.dataclass
class Store:
    runs: Runs


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_pump, "RESUME_BACKOFF_S", (0.0,) * run_pump.RESUME_ATTEMPTS)


def pump(store: Store, execs: Exec) -> RunPump:
    """A pump from the run's stored row, as a (re)started controller makes one."""
    return RunPump(store.runs.run, store=store, execs=execs, keep=100, notify=lambda _: None)  # type: ignore[arg-type]


def told(store: Store) -> list[tuple[int, str, str]]:
    """The stored events: id, type, text (if any)."""
    return [(e.seq, e.type, json.loads(e.data).get("text", "")) for e in store.runs.stored]


def new_store() -> Store:
    run = RunRecord(
        user_id="ann",
        vm_id="vm-1",
        provider=Provider.CLAUDE_CODE,
        timeout_s=60,
        exec_id="exec-1",
        status=RunStatus.RUNNING,
    )
    return Store(Runs(run))


async def test_a_stream_read_again_mid_line_gives_each_line_once() -> None:
    store = new_store()
    await pump(store, Exec(breaks_at=2)).run_to_end()
    events = told(store)
    assert [text for _, kind, text in events if kind == "message.delta"] == ["HELLO", "WORLD"]
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert "raw" not in [kind for _, kind, _ in events], "a line spliced to a copy of itself"


async def test_the_next_controllers_pump_reads_on_without_repeating_a_line() -> None:
    store = new_store()
    cut = Exec(hangs_at=2)
    first = asyncio.create_task(pump(store, cut).run_to_end())
    await cut.hanging.wait()  # the first event read, the second line half there
    first.cancel()  # the controller ends
    await asyncio.gather(first, return_exceptions=True)
    await pump(store, Exec()).run_to_end()
    events = told(store)
    assert [text for _, kind, text in events if kind == "message.delta"] == ["HELLO", "WORLD"]
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(
    ("exit_data", "ends"),
    [
        ({"code": 0, "signal": None, "reason": "exited"}, ("run.completed", None)),
        ({"code": None, "signal": "SIGTERM", "reason": "signaled"}, ("run.failed", "cancelled")),
    ],
)
async def test_a_cancel_that_came_after_the_cli_finished_its_answer_leaves_it_completed(
    exit_data: dict[str, Any], ends: tuple[str, str | None]
) -> None:
    # A cancel asked while the CLI was exiting 0 with its whole answer turned that answer
    # into "cancelled"; a CLI the cancel stopped is still cancelled.
    lines = answer_lines("claude_code")
    whole = [
        ExecEvent(1, "stdout", {"data": "\n".join(lines) + "\n"}),
        ExecEvent(2, "exit", exit_data),
    ]
    store = new_store()
    store.runs.run = dataclasses.replace(store.runs.run, cancel_requested=True)
    await pump(store, Exec(output=whole)).run_to_end()
    last = store.runs.stored[-1]
    assert (last.type, json.loads(last.data).get("code")) == ends


async def test_the_vms_sleeps_break_the_stream_without_using_up_its_resumes() -> None:
    # Each sleep breaks the stream before any event; none counts against RESUME_ATTEMPTS (the VM
    # slept: its agent did not fail), and each read starts at the stored cursor.
    store = new_store()
    execs = Exec(sleeps_at=1, sleeps=run_pump.RESUME_ATTEMPTS + 3)
    await pump(store, execs).run_to_end()
    events = told(store)
    assert [text for _, kind, text in events if kind == "message.delta"] == ["HELLO", "WORLD"]
    assert set(execs.reads_after) == {0}
    final = json.loads(store.runs.stored[-1].data)
    assert "stopped answering" not in final.get("message", "")


async def restarted(output: list[ExecEvent], *, stop_at: int) -> Store:
    """The run read by one pump up to event ``stop_at`` (the controller ends there), then
    read on by the next controller's, from the stored cursor and checkpoint."""
    store = new_store()
    cut = Exec(output=output, hangs_at=stop_at)
    first = asyncio.create_task(pump(store, cut).run_to_end())
    await cut.hanging.wait()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await pump(store, Exec(output=output)).run_to_end()
    return store


def ended(store: Store) -> tuple[str, str | None]:
    last = store.runs.stored[-1]
    return last.type, json.loads(last.data).get("code")


async def test_a_restart_between_streamed_text_and_its_assistant_line_says_it_once() -> None:
    # The assistant line repeats what the deltas streamed; a new pump's fresh parser did not
    # know they had, and said the whole answer a second time.
    lines = answer_lines("claude_code")
    first_whole = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "assistant")
    output = [
        ExecEvent(1, "stdout", {"data": "\n".join(lines[:first_whole]) + "\n"}),
        ExecEvent(2, "stdout", {"data": "\n".join(lines[first_whole:]) + "\n"}),
        ExecEvent(3, "exit", {"code": 0, "signal": None, "reason": "exited"}),
    ]
    once = new_store()
    await pump(once, Exec(output=output)).run_to_end()
    store = await restarted(output, stop_at=2)
    deltas = [text for _, kind, text in told(store) if kind == "message.delta"]
    assert "".join(deltas) == "".join(t for _, k, t in told(once) if k == "message.delta")
    assert told(store) == told(once)


async def test_a_restart_after_the_clis_result_before_its_exit_still_completes() -> None:
    # The CLI's ``result`` decides the run's end at the exit; a fresh parser had not seen it.
    lines = answer_lines("claude_code")
    output = [
        ExecEvent(1, "stdout", {"data": "\n".join(lines) + "\n"}),
        ExecEvent(2, "exit", {"code": 0, "signal": None, "reason": "exited"}),
    ]
    store = await restarted(output, stop_at=2)
    assert ended(store) == ("run.completed", None)


async def test_a_restart_keeps_the_stderr_tail_that_names_the_failure() -> None:
    output = [
        ExecEvent(1, "stderr", {"data": "Error: 429 Too Many Requests\n"}),
        ExecEvent(2, "exit", {"code": 1, "signal": None, "reason": "exited"}),
    ]
    store = await restarted(output, stop_at=2)
    assert ended(store) == ("run.failed", "rate_limited")


async def test_an_unreadable_checkpoint_reads_on_with_a_fresh_parser() -> None:
    store = new_store()
    store.runs.saved = '{"version": 0}'
    await pump(store, Exec()).run_to_end()
    events = told(store)
    assert [text for _, kind, text in events if kind == "message.delta"] == ["HELLO", "WORLD"]


class Silent(Exec):
    """An agent whose every answer is a long error (a guest's root may write any text)."""

    async def follow(self, vm_id: str, exec_id: str, *, after: int = 0) -> AsyncIterator[ExecEvent]:
        raise AgentError("refused: " + "x" * 100_000)
        yield  # pragma: no cover  (an async generator)


async def test_the_agents_words_in_the_runs_end_are_cut() -> None:
    # The run.failed event (kept, sent to webhooks) quoted the agent's error whole.
    store = new_store()
    await pump(store, Silent()).run_to_end()
    final = json.loads(store.runs.stored[-1].data)
    assert store.runs.stored[-1].type == "run.failed"
    assert final["message"].startswith("the VM's agent stopped answering: refused: xxx")
    assert len(final["message"]) < 2100
    assert final["message"].endswith("more characters)")
