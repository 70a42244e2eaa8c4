"""VM rows on a real database: compare-and-set transitions, field updates and active totals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store import Store, VmRecord
from hearth.store.records import EgressRecord
from hearth.vm.types import BootMode, VmState, VmType
from hearth_agent.wire import Provider
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import FakeClock, OpenStore, new_vm

CONTENDERS = 6
ROUNDS = 5


@pytest.fixture
async def alice(store: Store) -> str:
    """A user who owns the VMs of a test."""
    return (await store.users.ensure("alice")).id


async def test_an_inserted_vm_reads_back_field_for_field(store: Store, alice: str) -> None:
    at = datetime(2030, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    vm = new_vm(
        alice,
        vm_type=VmType.BROWSER,
        backend="firecracker",
        status=VmState.BOOTING,
        agent_url="http://127.0.0.1:40123",
        ip="10.0.0.2",
        host_port=40123,
        pid=4242,
        workdir=Path("/var/lib/hearth/vms/x"),
        disk_path=Path("/var/lib/hearth/vms/x/disk.qcow2"),
        disk_bytes=8 * 1024**3,
        token_hash="ab" * 32,
        boot_mode=BootMode.RESTORE,
        vcpus=2,
        mem_mib=2048,
        created_at=at,
        updated_at=at,
        ready_at=at,
        error=None,
        pooled=True,
    )
    assert await store.vms.insert(vm) == vm
    assert await store.vms.get(vm.id) == vm


async def test_inserting_a_taken_id_is_a_conflict(store: Store, alice: str) -> None:
    vm = await store.vms.insert(new_vm(alice))
    with pytest.raises(Conflict, match="already exists"):
        await store.vms.insert(new_vm(alice, id=vm.id))


async def test_inserting_a_vm_for_an_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await store.vms.insert(new_vm("ghost"))


async def test_getting_an_unknown_vm_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="vm-missing"):
        await store.vms.get("vm-missing")


# --- transitions -------------------------------------------------------------------------------


async def test_transition_moves_the_status_sets_fields_and_stamps_updated_at(
    clocked_store: Store, clock: FakeClock
) -> None:
    await clocked_store.users.ensure("alice")
    vm = await clocked_store.vms.insert(new_vm("alice", status=VmState.BOOTING))
    ready_at = clock.advance(3)

    moved = await clocked_store.vms.transition(
        vm.id, VmState.BOOTING, VmState.READY, ready_at=ready_at, agent_url="http://a", pid=7
    )

    assert moved.status is VmState.READY
    assert (moved.ready_at, moved.agent_url, moved.pid) == (ready_at, "http://a", 7)
    assert moved.updated_at == clock.now
    assert moved.created_at == vm.created_at
    assert await clocked_store.vms.get(vm.id) == moved


async def test_transition_accepts_any_of_several_expected_statuses(
    store: Store, alice: str
) -> None:
    vm = await store.vms.insert(new_vm(alice, status=VmState.PAUSED))
    moved = await store.vms.transition(vm.id, [VmState.READY, VmState.PAUSED], VmState.STOPPING)
    assert moved.status is VmState.STOPPING


async def test_transition_from_an_unexpected_status_is_a_conflict_naming_the_current_one(
    store: Store, alice: str
) -> None:
    vm = await store.vms.insert(new_vm(alice, status=VmState.READY))
    with pytest.raises(Conflict, match=r"is ready, not booting"):
        await store.vms.transition(vm.id, VmState.BOOTING, VmState.FAILED, error="x")
    assert await store.vms.get(vm.id) == vm


@pytest.mark.parametrize(
    ("expected", "new"),
    [
        (VmState.CREATING, VmState.READY),
        (VmState.DESTROYED, VmState.CREATING),
        ([VmState.BOOTING, VmState.STOPPING], VmState.READY),
    ],
)
async def test_a_move_the_transition_table_forbids_is_a_conflict_and_changes_nothing(
    store: Store, alice: str, expected: VmState | list[VmState], new: VmState
) -> None:
    first = expected if isinstance(expected, VmState) else expected[0]
    vm = await store.vms.insert(new_vm(alice, status=first))
    with pytest.raises(Conflict, match="cannot go from"):
        await store.vms.transition(vm.id, expected, new)
    assert await store.vms.get(vm.id) == vm


async def test_statuses_may_be_given_as_their_string_values(store: Store, alice: str) -> None:
    vm = await store.vms.insert(new_vm(alice, status=VmState.READY))
    moved = await store.vms.transition(vm.id, "ready", "paused")  # type: ignore[arg-type]
    assert moved.status is VmState.PAUSED
    assert await store.vms.list(statuses=["paused"]) == [moved]  # type: ignore[list-item]


async def test_a_status_outside_the_enum_is_invalid_input(store: Store, alice: str) -> None:
    vm = await store.vms.insert(new_vm(alice, status=VmState.READY))
    with pytest.raises(InvalidInput):
        await store.vms.transition(vm.id, "ready", "sleeping")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await store.vms.list(statuses=["sleeping"])  # type: ignore[list-item]


async def test_transition_of_an_unknown_vm_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="vm-missing"):
        await store.vms.transition("vm-missing", VmState.READY, VmState.PAUSED)


async def test_transition_with_no_expected_status_is_invalid_input(
    store: Store, alice: str
) -> None:
    vm = await store.vms.insert(new_vm(alice))
    with pytest.raises(InvalidInput):
        await store.vms.transition(vm.id, [], VmState.BOOTING)


async def test_concurrent_transitions_from_one_status_have_exactly_one_winner(
    open_store: OpenStore,
) -> None:
    # Separate stores stand for separate controller processes, each with its own pool.
    stores = [await open_store() for _ in range(CONTENDERS)]
    await stores[0].users.ensure("alice")
    for _ in range(ROUNDS):
        vm = await stores[0].vms.insert(new_vm("alice", status=VmState.READY))
        outcomes = await asyncio.gather(
            *(
                s.vms.transition(vm.id, VmState.READY, VmState.STOPPING, error=f"by {i}")
                for i, s in enumerate(stores)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, VmRecord)]
        losers = [o for o in outcomes if not isinstance(o, VmRecord)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, Conflict) and "is stopping" in o.message for o in losers), losers
        assert await stores[0].vms.get(vm.id) == winners[0]


async def test_entering_destroyed_stamps_destroyed_at(
    clocked_store: Store, clock: FakeClock
) -> None:
    await clocked_store.users.ensure("alice")
    vm = await clocked_store.vms.insert(new_vm("alice", status=VmState.STOPPING))
    clock.advance(10)
    destroyed = await clocked_store.vms.transition(vm.id, VmState.STOPPING, VmState.DESTROYED)
    assert destroyed.destroyed_at == clock.now


# --- updates -----------------------------------------------------------------------------------


async def test_update_sets_fields_and_stamps_updated_at(
    clocked_store: Store, clock: FakeClock
) -> None:
    await clocked_store.users.ensure("alice")
    vm = await clocked_store.vms.insert(new_vm("alice"))
    clock.advance(5)
    updated = await clocked_store.vms.update(
        vm.id, disk_bytes=5 * 1024**3, workdir="/w", boot_mode="pool", pooled=True, ip=None
    )
    assert (updated.disk_bytes, updated.workdir, updated.boot_mode, updated.pooled) == (
        5 * 1024**3,
        Path("/w"),
        BootMode.POOL,
        True,
    )
    assert updated.status is VmState.CREATING
    assert updated.updated_at == clock.now
    assert await clocked_store.vms.get(vm.id) == updated


async def test_update_hands_a_pooled_vm_to_its_new_owner(store: Store, alice: str) -> None:
    await store.users.ensure("pool")
    vm = await store.vms.insert(new_vm("pool", status=VmState.READY, pooled=True))
    handed = await store.vms.update(vm.id, user_id=alice, pooled=False, token_hash="ef" * 32)
    assert (handed.user_id, handed.pooled) == (alice, False)
    assert [v.id for v in await store.vms.list(user_id=alice)] == [vm.id]


async def test_handing_a_vm_to_an_unknown_user_is_not_found(store: Store, alice: str) -> None:
    vm = await store.vms.insert(new_vm(alice, status=VmState.READY))
    with pytest.raises(NotFound, match="ghost"):
        await store.vms.update(vm.id, user_id="ghost")
    with pytest.raises(NotFound, match="ghost"):
        await store.vms.transition(vm.id, VmState.READY, VmState.PAUSED, user_id="ghost")
    assert await store.vms.get(vm.id) == vm


async def test_update_refuses_to_change_the_status(store: Store, alice: str) -> None:
    vm = await store.vms.insert(new_vm(alice))
    with pytest.raises(InvalidInput, match="transition"):
        await store.vms.update(vm.id, status=VmState.READY)


async def test_update_of_an_unknown_vm_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.vms.update("vm-missing", pid=1)


@pytest.mark.parametrize(
    "fields",
    [{"colour": "blue"}, {"id": "vm-other"}, {"backend": "qemu"}, {"created_at": None}],
)
async def test_unknown_or_fixed_field_names_are_invalid_input(
    store: Store, alice: str, fields: dict[str, object]
) -> None:
    vm = await store.vms.insert(new_vm(alice, status=VmState.BOOTING))
    with pytest.raises(InvalidInput, match="no updatable field"):
        await store.vms.update(vm.id, **fields)
    with pytest.raises(InvalidInput, match="no updatable field"):
        await store.vms.transition(vm.id, VmState.BOOTING, VmState.READY, **fields)
    assert await store.vms.get(vm.id) == vm


@pytest.mark.parametrize(
    "fields",
    [
        {"pid": "1234"},
        {"pooled": 1},
        {"boot_mode": "warm"},
        {"workdir": 3},
        {"ready_at": datetime(2030, 1, 1)},
        {"vcpus": None},
    ],
)
async def test_field_values_of_the_wrong_type_are_invalid_input(
    store: Store, alice: str, fields: dict[str, object]
) -> None:
    vm = await store.vms.insert(new_vm(alice))
    with pytest.raises(InvalidInput):
        await store.vms.update(vm.id, **fields)


# --- listing and totals ------------------------------------------------------------------------


async def test_list_filters_by_user_and_status(store: Store) -> None:
    await store.users.ensure("alice")
    await store.users.ensure("bob")
    a_ready = await store.vms.insert(new_vm("alice", status=VmState.READY))
    a_gone = await store.vms.insert(new_vm("alice", status=VmState.DESTROYED))
    b_ready = await store.vms.insert(new_vm("bob", status=VmState.READY))

    assert {v.id for v in await store.vms.list()} == {a_ready.id, a_gone.id, b_ready.id}
    assert {v.id for v in await store.vms.list(user_id="alice")} == {a_ready.id, a_gone.id}
    assert {v.id for v in await store.vms.list(statuses=[VmState.READY])} == {
        a_ready.id,
        b_ready.id,
    }
    assert await store.vms.list(user_id="bob", statuses={VmState.DESTROYED}) == []
    assert await store.vms.list(statuses=[]) == []


async def test_counts_and_memory_exclude_destroyed_and_failed_vms_memory_hibernated_ones(
    store: Store,
) -> None:
    await store.users.ensure("alice")
    await store.users.ensure("bob")
    assert await store.vms.count_active() == 0
    assert await store.vms.sum_active_mem_mib() == 0
    for status in VmState:
        await store.vms.insert(new_vm("alice", status=status, mem_mib=1000))
    await store.vms.insert(new_vm("bob", vm_type=VmType.BROWSER, mem_mib=300))
    await store.vms.insert(new_vm("bob", status=VmState.FAILED, mem_mib=7000))

    active_states = len(VmState) - 2  # all but destroyed and failed
    assert await store.vms.count_active() == active_states + 1
    assert await store.vms.count_active(user_id="alice") == active_states
    assert await store.vms.count_active(vm_type=VmType.BROWSER) == 1
    assert await store.vms.count_active(user_id="alice", vm_type=VmType.BROWSER) == 0
    # A hibernated VM keeps its place in its user's count; its memory is on disk.
    assert await store.vms.sum_active_mem_mib() == (active_states - 1) * 1000 + 300


async def test_a_cli_vms_egress_path_is_replaced_whole_and_forgotten_with_its_vm(
    store: Store, alice: str
) -> None:
    kept = await store.vms.insert(new_vm(alice))
    other = await store.vms.insert(new_vm(alice))
    first = EgressRecord(vm_id=kept.id, port=41000)
    await store.egress.put(first)
    assert await store.egress.get(kept.id) == first
    changed = EgressRecord(
        vm_id=kept.id,
        port=41000,
        providers=frozenset({Provider.CODEX, Provider.CLAUDE_CODE}),
        allow_out=("*.example.org", "stand-in.test:8443"),
        deny_out=("bad.example.org",),
    )
    await store.egress.put(changed)
    assert await store.egress.get(kept.id) == changed
    await store.egress.put(EgressRecord(vm_id=other.id, port=41001))
    assert await store.egress.delete_except({kept.id}) == 1
    assert await store.egress.get(other.id) is None
    await store.egress.delete(kept.id)
    assert await store.egress.get(kept.id) is None
