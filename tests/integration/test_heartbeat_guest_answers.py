"""Heartbeats against what a guest's root may answer, on SQLite and PostgreSQL: a version that
is not short printable text counts as a missed heartbeat for that VM (its row keeps the version
it had), and neither it nor an unexpected error for one VM stops the other VMs' checks.

The node and the VM service are stand-ins (the heartbeat is what is tested, on a real store):
each VM's agent "answers" the version the test gives it, or is silent.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from hearth.agent_client import AgentError
from hearth.config import Settings
from hearth.control.heartbeat import Heartbeat
from hearth.metrics import ControllerMetrics
from hearth.store import Store, VmRecord, utc_now
from hearth.versions import AGENT_VERSION_MAX
from hearth.vm.types import VmState
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import new_vm


class StandInNode:
    """Answers each VM's ``/health`` with the version given for it; None: silent."""

    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers

    async def probe_agent(self, vm: str, *, timeout_s: float) -> str:
        answer = self.answers[vm]
        if answer is None:
            raise AgentError(f"VM {vm}: no answer")
        return answer


class StandInVms:
    """What the heartbeat uses of a ``VmService``: the store, the VMs it runs, their VMMs alive
    (or, for ``broken``, a bug when asked)."""

    def __init__(
        self, store: Store, answers: dict[str, str | None], *, broken: frozenset[str] = frozenset()
    ) -> None:
        self.store = store
        self.live = {vm_id: vm_id for vm_id in answers}
        self.node = StandInNode(answers)
        self.broken = broken

    def alive(self, vm_id: str) -> bool:
        if vm_id in self.broken:
            raise RuntimeError(f"a bug while looking at {vm_id}")
        return True

    async def announce(self, *args: object, **kwargs: object) -> None:
        pass


def heartbeat(vms: StandInVms, tmp_path: Path) -> Heartbeat:
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path)}).with_overrides(
        heartbeat_misses=1
    )
    return Heartbeat(vms=vms, settings=settings, metrics=ControllerMetrics())  # type: ignore[arg-type]


async def ready_vm(store: Store, user_id: str, **overrides: object) -> VmRecord:
    await store.users.ensure(user_id)
    return await store.vms.insert(
        new_vm(user_id, status=VmState.READY, agent_url="http://agent", **overrides)
    )


@pytest.mark.parametrize(
    "version",
    [
        "1.0." + "9" * (AGENT_VERSION_MAX - 3),
        "9" * 4000,
        "1.0\x00evil",
        "1.0\nforged log line",
        "1.0\x1b[2J",
    ],
    ids=["one-too-long", "far-too-long", "nul", "newline", "escape"],
)
async def test_a_version_that_is_not_short_printable_text_is_a_miss_and_others_are_checked(
    store: Store, backend: str, tmp_path: Path, version: str
) -> None:
    hostile = await ready_vm(store, "mallory")
    victim = await ready_vm(store, "bob")
    beat = heartbeat(StandInVms(store, {hostile.id: version, victim.id: None}), tmp_path)

    await beat.beat_once()

    after = await store.vms.get(hostile.id)
    assert after.status is VmState.UNHEALTHY
    assert after.agent_version is None
    assert after.error is not None
    assert "not printable text" in after.error
    assert len(after.error) < 300  # quoted as a cut repr, never as it came
    assert not any(char in after.error for char in "\x00\n\x1b")
    assert (await store.vms.get(victim.id)).status is VmState.UNHEALTHY


@pytest.mark.parametrize("version", ["", "0.1.1", "v" * AGENT_VERSION_MAX, "1.0-ünïcode"])
async def test_a_short_printable_version_is_recorded(
    store: Store, backend: str, tmp_path: Path, version: str
) -> None:
    vm = await ready_vm(store, "ann")
    await heartbeat(StandInVms(store, {vm.id: version}), tmp_path).beat_once()
    after = await store.vms.get(vm.id)
    assert (after.status, after.agent_version) == (VmState.READY, version)


async def test_an_unexpected_error_for_one_vm_is_logged_and_the_round_goes_on(
    store: Store, backend: str, tmp_path: Path
) -> None:
    # Listed oldest first: the broken VM is handled before the other one.
    first = await ready_vm(store, "mallory", created_at=utc_now() - timedelta(minutes=1))
    second = await ready_vm(store, "bob")
    vms = StandInVms(store, {first.id: None, second.id: None}, broken=frozenset({first.id}))

    await heartbeat(vms, tmp_path).beat_once()

    assert (await store.vms.get(first.id)).status is VmState.READY
    assert (await store.vms.get(second.id)).status is VmState.UNHEALTHY
