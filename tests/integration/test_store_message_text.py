"""Error messages carry words from outside Hearth's control (a guest's console, an agent's or a
CLI's answer): a NUL in them, which PostgreSQL's text cannot hold, failed the whole row's write
(psycopg DataError). A VM whose guest printed one before it died then stayed ``ready`` in the
store (its failure unwritable), counted against the host's memory. Kept as U+FFFD, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.auth.states import AuthStatus
from hearth.config import Settings
from hearth.store import Store
from hearth.vm.types import Vm, VmState
from tests.fake_backend import FakeBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import new_auth_session, new_vm

SAID = "kernel panic\x00 - not syncing"
KEPT = "kernel panic\ufffd - not syncing"


async def test_a_nul_in_an_error_is_kept_as_a_replacement_character(store: Store) -> None:
    await store.users.ensure("ann")
    vm = await store.vms.insert(new_vm("ann"))
    failed = await store.vms.transition(vm.id, VmState.CREATING, VmState.FAILED, error=SAID)
    assert failed.error == KEPT
    assert (await store.vms.get(vm.id)).error == KEPT
    login = await store.auth_sessions.insert(new_auth_session("ann"))
    ended = await store.auth_sessions.transition(
        login.id, AuthStatus.PENDING, AuthStatus.FAILED, error_message=SAID
    )
    assert ended.error_message == KEPT


async def test_a_vm_whose_console_said_a_nul_before_it_died_is_failed(
    api_settings: Settings,
    fake_backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_api(api_settings, fake_backend, tmp_path / "image") as api:
        made = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
        assert made.status_code == 201, made.text
        vm_id = made.json()["id"]

        def console_tail(vm: Vm, lines: int = 40) -> str:
            return SAID  # what its guest wrote on the serial console

        monkeypatch.setattr(fake_backend, "console_tail", console_tail)
        fake_backend.kill(vm_id)
        assert await api.ctl.vms.watch_once() == [vm_id]
        row = await api.ctl.store.vms.get(vm_id)
        assert row.status is VmState.FAILED
        assert row.error is not None
        assert KEPT in row.error
        assert await api.ctl.store.vms.sum_active_mem_mib() == 0
