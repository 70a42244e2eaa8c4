"""Runs: their rows, lifecycle moves by compare-and-set, and their bounded event logs.

Beside a running run's events, ``run_events`` keeps its pump's checkpoint (what the CLI's
stream parser has learnt, ``hearth.control.run_pump``) as the row numbered ``CHECKPOINT_SEQ``,
below every event's id (from 1): never read, counted or forgotten as an event, written with the
exec cursor it belongs to in one transaction (a cursor stored without one keeps the row as it
is: the pump's state has not changed since), and gone once the run has ended.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hearth.runs.states import RunStatus, check_transition
from hearth.store.models import run_events_table, runs_table
from hearth.store.records import RunEventRecord, RunRecord
from hearth.store.repositories._base import (
    Coerce,
    as_bool,
    as_int,
    as_str,
    as_timestamp,
    check_fields,
    optional,
    to_record,
    to_values,
)
from hearth.store.repositories._status import StatusRepository

CHECKPOINT_SEQ = 0
CHECKPOINT_TYPE = "checkpoint"
# ``_write_events``' checkpoint of a run that has ended: none is kept.
DROP = ""

UPDATABLE_FIELDS: dict[str, Coerce] = {
    "session_id": optional(as_str),
    "exec_id": optional(as_str),
    "exec_cursor": as_int,
    "usage": optional(as_str),
    "exit_code": optional(as_int),
    "exit_signal": optional(as_int),
    "failure_code": optional(as_str),
    "error_message": optional(as_str),
    "cancel_requested": as_bool,
    "finished_at": optional(as_timestamp),
}


class RunRepo(
    StatusRepository[RunRecord, RunStatus],
    table=runs_table,
    record=RunRecord,
    status=RunStatus,
    what="run",
    updatable=UPDATABLE_FIELDS,
    check=check_transition,
    stamps={RunStatus.COMPLETED: "finished_at", RunStatus.FAILED: "finished_at"},
):
    """Persists runs and their events; every status change is a compare-and-set."""

    async def discard_starting(self, run_id: str) -> bool:
        """Delete a run that never started (its CLI was refused); True if one was deleted."""
        statement = delete(runs_table).where(
            runs_table.c.id == run_id, runs_table.c.status == RunStatus.STARTING
        )
        async with self._writes.begin() as conn:
            return bool((await conn.execute(statement)).rowcount)

    async def list_for_vm(self, vm_id: str, *, limit: int = 100) -> list[RunRecord]:
        """The VM's runs, newest first."""
        statement = (
            select(runs_table)
            .where(runs_table.c.vm_id == vm_id)
            .order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .limit(limit)
        )
        return await self._read_records(RunRecord, statement)

    async def append_events(
        self,
        run_id: str,
        events: Sequence[RunEventRecord],
        *,
        exec_cursor: int,
        keep: int,
        checkpoint: str | None = None,
        **fields: object,
    ) -> None:
        """Store ``events`` (numbered on from the run's last), move its exec cursor, keep
        ``checkpoint`` as the pump's state at that cursor (None: the one stored is, and is left
        as it is), set ``fields``, and forget all but the newest ``keep`` events: one
        transaction."""
        values = {"exec_cursor": exec_cursor, **fields}
        checked = check_fields(self._what, self._updatable, values)
        checked["updated_at"] = self._clock()
        async with self._writes.begin() as conn:
            await _write_events(conn, run_id, events, checked, checkpoint=checkpoint, keep=keep)

    async def end(
        self,
        run_id: str,
        events: Sequence[RunEventRecord],
        *,
        status: RunStatus,
        exec_cursor: int,
        keep: int,
        **fields: object,
    ) -> None:
        """``append_events`` of a run's last events (its terminal one last), with its move from
        ``running`` to ``status`` in the same transaction, its checkpoint dropped: both land or
        neither does, so a run never has a terminal event it has not ended by, nor two. Conflict
        (nothing written) if the run is not running."""

        async def write(conn: AsyncConnection) -> None:
            await _write_events(conn, run_id, events, {}, checkpoint=DROP, keep=keep)

        await self.transition_with(
            write, run_id, RunStatus.RUNNING, status, exec_cursor=exec_cursor, **fields
        )

    async def checkpoint(self, run_id: str) -> str | None:
        """The pump's checkpoint kept with the run's exec cursor, if any."""
        statement = select(run_events_table.c.data).where(
            run_events_table.c.run_id == run_id, run_events_table.c.seq == CHECKPOINT_SEQ
        )
        row = await self._read_one(statement)
        return None if row is None else str(row[0])

    async def events(self, run_id: str, *, after: int, limit: int = 500) -> list[RunEventRecord]:
        """The run's stored events with ids above ``after``, oldest first."""
        statement = (
            select(run_events_table)
            .where(
                run_events_table.c.run_id == run_id,
                run_events_table.c.seq > max(after, CHECKPOINT_SEQ),
            )
            .order_by(run_events_table.c.seq)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(statement)
        return [to_record(RunEventRecord, row) for row in rows]

    async def first_event_id(self, run_id: str) -> int | None:
        """The id of the oldest event still kept, or None."""
        statement = (
            select(run_events_table.c.seq)
            .where(run_events_table.c.run_id == run_id, run_events_table.c.seq > CHECKPOINT_SEQ)
            .order_by(run_events_table.c.seq)
            .limit(1)
        )
        row = await self._read_one(statement)
        return None if row is None else int(row[0])


async def _write_events(
    conn: AsyncConnection,
    run_id: str,
    events: Sequence[RunEventRecord],
    values: dict[str, object],
    *,
    checkpoint: str | None,
    keep: int,
) -> None:
    """In ``conn``'s transaction: replace the checkpoint (None: leave it, ``DROP``: delete it),
    add ``events``, set ``values`` (and the last event's id) on the run's row, forget all but
    the newest ``keep`` events."""
    rows = [to_values(event) for event in events]
    if checkpoint:
        saved = RunEventRecord(
            run_id=run_id, seq=CHECKPOINT_SEQ, type=CHECKPOINT_TYPE, data=checkpoint
        )
        rows.append(to_values(saved))
    if events:
        values = {**values, "last_event_id": events[-1].seq}
    if checkpoint is not None:
        await conn.execute(
            delete(run_events_table).where(
                run_events_table.c.run_id == run_id, run_events_table.c.seq == CHECKPOINT_SEQ
            )
        )
    if rows:
        await conn.execute(run_events_table.insert(), rows)
    if values:
        await conn.execute(update(runs_table).where(runs_table.c.id == run_id).values(values))
    if events and events[-1].seq > keep:
        await conn.execute(
            delete(run_events_table).where(
                run_events_table.c.run_id == run_id,
                run_events_table.c.seq > CHECKPOINT_SEQ,
                run_events_table.c.seq <= events[-1].seq - keep,
            )
        )
