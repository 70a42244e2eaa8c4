"""Ended login sessions are forgotten after ``HEARTH_AUTH_SESSION_RETENTION_S``, on SQLite and
PostgreSQL: every ended status goes once it ended longer ago than that, in one statement; a
session that has not ended never goes, however old, nor one whose Browser VM still holds
resources (the next start destroys that VM by its session); an hourly loop of the controller's
runs it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hearth.auth.retention import EndedLogins
from hearth.auth.states import TERMINAL, AuthStatus
from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.store import Store
from hearth.vm.types import VmState, VmType
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import (
    FakeClock,
    OpenStore,
    new_auth_session,
    new_vm,
)

DAY = 24 * 3600.0


async def ended(store: Store, user_id: str, status: AuthStatus, **fields: object) -> str:
    """A session of ``user_id`` moved from delivering to ``status`` the way the flow moves it
    (its end stamped by the store's clock); its id."""
    delivering = new_auth_session(user_id, status=AuthStatus.DELIVERING, **fields)
    record = await store.auth_sessions.insert(delivering)
    await store.auth_sessions.transition(record.id, AuthStatus.DELIVERING, status)
    return record.id


async def test_sessions_ended_before_the_cut_go_and_no_other_does(
    clocked_store: Store, clock: FakeClock
) -> None:
    store = clocked_store
    await store.users.ensure("ann")
    old_ended = [await ended(store, "ann", status) for status in sorted(TERMINAL)]
    still_running = await store.auth_sessions.insert(
        new_auth_session("ann", provider="codex", status=AuthStatus.AWAITING_USER)
    )
    browser = await store.vms.insert(new_vm("ann", vm_type=VmType.BROWSER, status=VmState.READY))
    browser_left = await ended(store, "ann", AuthStatus.FAILED, browser_vm_id=browser.id)
    gone_vm = await store.vms.insert(new_vm("ann", vm_type=VmType.BROWSER, status=VmState.FAILED))
    browser_gone = await ended(store, "ann", AuthStatus.CANCELLED, browser_vm_id=gone_vm.id)
    unstamped = await store.auth_sessions.insert(
        new_auth_session("ann", status=AuthStatus.CANCELLED, updated_at=clock.now)
    )
    cut = clock.now + timedelta(microseconds=1)
    clock.now = cut
    recent = await ended(store, "ann", AuthStatus.COMPLETED)
    clock.advance(DAY)

    assert await store.auth_sessions.prune_ended(cut) == 6
    kept = {record.id for record in await store.auth_sessions.list()}
    assert kept == {still_running.id, browser_left, recent}
    assert not kept & {*old_ended, browser_gone, unstamped.id}
    assert await store.auth_sessions.prune_ended(cut) == 0

    # Years later: still nothing that has not ended goes.
    assert await store.auth_sessions.prune_ended(clock.advance(3650 * DAY)) == 1
    kept = {record.id for record in await store.auth_sessions.list()}
    assert kept == {still_running.id, browser_left}
    await store.vms.transition(browser.id, VmState.READY, VmState.STOPPING)
    assert await store.auth_sessions.prune_ended(clock.now) == 0, "being torn down: not yet"
    await store.vms.transition(browser.id, VmState.STOPPING, VmState.DESTROYED)
    assert await store.auth_sessions.prune_ended(clock.now) == 1
    assert [record.id for record in await store.auth_sessions.list()] == [still_running.id]


async def test_the_hourly_loop_forgets_what_ended_before_the_setting(
    open_store: OpenStore, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=3))
    store = await open_store(clock=clock)
    await store.users.ensure("ann")
    settings = Settings.from_env(
        {"HEARTH_STATE_DIR": str(tmp_path), "HEARTH_AUTH_SESSION_RETENTION_S": "7200"}
    )
    logins = EndedLogins(store=store, settings=settings)
    old = await ended(store, "ann", AuthStatus.TIMEOUT)
    clock.now = datetime.now(UTC) - timedelta(hours=1)
    kept = await ended(store, "ann", AuthStatus.COMPLETED, provider="codex")

    pruning = asyncio.create_task(logins.run())
    try:
        async with asyncio.timeout(10):
            while old in {record.id for record in await store.auth_sessions.list()}:
                await asyncio.sleep(0.05)
    finally:
        pruning.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pruning
    assert [record.id for record in await store.auth_sessions.list()] == [kept]
    assert await logins.prune_once() == 0


def test_the_retention_is_thirty_days_unless_set_within_bounds(tmp_path: Path) -> None:
    def retention(value: str) -> float:
        env = {"HEARTH_STATE_DIR": str(tmp_path), "HEARTH_AUTH_SESSION_RETENTION_S": value}
        return Settings.from_env(env).auth_session_retention_s

    assert retention("") == 30 * DAY
    assert retention("3600") == 3600.0
    for bad in ("59", "0", "-1", "nan", "inf", "soon", f"{3651 * DAY}"):
        with pytest.raises(ConfigError, match="HEARTH_AUTH_SESSION_RETENTION_S"):
            retention(bad)
