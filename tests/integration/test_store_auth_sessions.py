"""Auth sessions on a real database: one active session per provider, compare-and-set moves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from hearth.auth.states import TERMINAL, AuthStatus
from hearth.errors import Conflict, InvalidInput, NotFound
from hearth.store import AuthSessionRecord, Store
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import FakeClock, OpenStore, new_auth_session

CONTENDERS = 6


@pytest.fixture
async def alice(store: Store) -> str:
    """A user who owns the sessions of a test."""
    return (await store.users.ensure("alice")).id


async def test_an_inserted_session_reads_back_field_for_field(store: Store, alice: str) -> None:
    at = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    session = new_auth_session(
        alice,
        provider="codex",
        status=AuthStatus.AWAITING_USER,
        vm_id="vm-cli",
        browser_vm_id="vm-browser",
        login_url="https://auth.example/login?state=abc",
        view_token_hash="cd" * 32,
        created_at=at,
        updated_at=at,
        stage_deadline_at=at + timedelta(minutes=10),
    )
    assert await store.auth_sessions.insert(session) == session
    assert await store.auth_sessions.get(session.id) == session


async def test_getting_an_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="as-missing"):
        await store.auth_sessions.get("as-missing")


async def test_inserting_a_session_for_an_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="ghost"):
        await store.auth_sessions.insert(new_auth_session("ghost"))


async def test_inserting_a_taken_id_is_a_conflict(store: Store, alice: str) -> None:
    session = await store.auth_sessions.insert(new_auth_session(alice))
    await store.auth_sessions.transition(session.id, AuthStatus.PENDING, AuthStatus.CANCELLED)
    with pytest.raises(Conflict, match="already exists"):
        await store.auth_sessions.insert(new_auth_session(alice, id=session.id))


# --- the one active session per user and provider ----------------------------------------------


async def test_find_active_returns_the_unfinished_session_of_that_user_and_provider(
    store: Store,
) -> None:
    for user in ("alice", "bob"):
        await store.users.ensure(user)
    mine = await store.auth_sessions.insert(new_auth_session("alice", provider="codex"))
    await store.auth_sessions.insert(new_auth_session("alice", provider="gemini_cli"))
    await store.auth_sessions.insert(new_auth_session("bob", provider="codex"))

    assert await store.auth_sessions.find_active("alice", "codex") == mine
    assert await store.auth_sessions.find_active("alice", "claude_code") is None
    assert await store.auth_sessions.find_active("carol", "codex") is None


@pytest.mark.parametrize("ending", sorted(TERMINAL))
async def test_a_session_that_ended_is_not_active(
    store: Store, alice: str, ending: AuthStatus
) -> None:
    session = await store.auth_sessions.insert(new_auth_session(alice))
    await store.auth_sessions.transition(session.id, AuthStatus.PENDING, AuthStatus.CLI_VM_STARTING)
    path = [AuthStatus.CLI_VM_STARTING]
    if ending is AuthStatus.COMPLETED:
        path += [
            AuthStatus.CLI_VM_READY,
            AuthStatus.BROWSER_VM_STARTING,
            AuthStatus.AWAITING_USER,
            AuthStatus.CREDENTIALS_CAPTURED,
            AuthStatus.DELIVERING,
        ]
    for old, new in zip(path, [*path[1:], ending], strict=True):
        await store.auth_sessions.transition(session.id, old, new)
    assert await store.auth_sessions.find_active(alice, session.provider) is None


async def test_a_second_active_session_for_the_same_provider_is_a_conflict(
    store: Store, alice: str
) -> None:
    first = await store.auth_sessions.insert(new_auth_session(alice, provider="codex"))
    with pytest.raises(Conflict, match=first.id):
        await store.auth_sessions.insert(new_auth_session(alice, provider="codex"))
    await store.auth_sessions.transition(first.id, AuthStatus.PENDING, AuthStatus.CANCELLED)
    second = await store.auth_sessions.insert(new_auth_session(alice, provider="codex"))
    assert await store.auth_sessions.find_active(alice, "codex") == second


async def test_concurrent_starts_for_one_provider_create_exactly_one_session(
    open_store: OpenStore,
) -> None:
    stores = [await open_store() for _ in range(CONTENDERS)]
    await stores[0].users.ensure("alice")
    outcomes = await asyncio.gather(
        *(s.auth_sessions.insert(new_auth_session("alice", provider="codex")) for s in stores),
        return_exceptions=True,
    )
    created = [o for o in outcomes if isinstance(o, AuthSessionRecord)]
    assert len(created) == 1, outcomes
    assert all(isinstance(o, Conflict) for o in outcomes if o not in created), outcomes
    assert await stores[0].auth_sessions.list(user_id="alice") == created


# --- transitions -------------------------------------------------------------------------------


async def test_transition_stamps_updated_at_and_sets_fields(
    clocked_store: Store, clock: FakeClock
) -> None:
    await clocked_store.users.ensure("alice")
    session = await clocked_store.auth_sessions.insert(new_auth_session("alice"))
    clock.advance(2)
    deadline = clock.now + timedelta(minutes=2)

    moved = await clocked_store.auth_sessions.transition(
        session.id,
        AuthStatus.PENDING,
        AuthStatus.CLI_VM_STARTING,
        vm_id="vm-cli",
        stage_deadline_at=deadline,
    )

    assert (moved.status, moved.vm_id, moved.stage_deadline_at) == (
        AuthStatus.CLI_VM_STARTING,
        "vm-cli",
        deadline,
    )
    assert moved.updated_at == clock.now
    assert moved.completed_at is None
    assert await clocked_store.auth_sessions.get(session.id) == moved


@pytest.mark.parametrize("ending", [AuthStatus.FAILED, AuthStatus.TIMEOUT, AuthStatus.CANCELLED])
async def test_entering_a_terminal_status_stamps_completed_at(
    clocked_store: Store, clock: FakeClock, ending: AuthStatus
) -> None:
    await clocked_store.users.ensure("alice")
    session = await clocked_store.auth_sessions.insert(new_auth_session("alice"))
    clock.advance(60)
    ended = await clocked_store.auth_sessions.transition(
        session.id, AuthStatus.PENDING, ending, error_message="why"
    )
    assert ended.completed_at == clock.now
    assert ended.error_message == "why"
    assert ended.is_terminal


async def test_concurrent_transitions_from_one_status_have_exactly_one_winner(
    open_store: OpenStore,
) -> None:
    stores = [await open_store() for _ in range(CONTENDERS)]
    await stores[0].users.ensure("alice")
    session = await stores[0].auth_sessions.insert(
        new_auth_session("alice", status=AuthStatus.AWAITING_USER)
    )
    outcomes = await asyncio.gather(
        *(
            s.auth_sessions.transition(
                session.id,
                AuthStatus.AWAITING_USER,
                AuthStatus.CREDENTIALS_CAPTURED if i % 2 else AuthStatus.TIMEOUT,
            )
            for i, s in enumerate(stores)
        ),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, AuthSessionRecord)]
    assert len(winners) == 1, outcomes
    losers = [o for o in outcomes if o not in winners]
    assert all(isinstance(o, Conflict) for o in losers), losers
    assert await stores[0].auth_sessions.get(session.id) == winners[0]


async def test_transition_from_an_unexpected_status_is_a_conflict_naming_the_current_one(
    store: Store, alice: str
) -> None:
    session = await store.auth_sessions.insert(new_auth_session(alice))
    with pytest.raises(Conflict, match="is pending, not awaiting_user"):
        await store.auth_sessions.transition(
            session.id, AuthStatus.AWAITING_USER, AuthStatus.CREDENTIALS_CAPTURED
        )
    assert await store.auth_sessions.get(session.id) == session


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (AuthStatus.PENDING, AuthStatus.DELIVERING),
        (AuthStatus.COMPLETED, AuthStatus.PENDING),
        (AuthStatus.CANCELLED, AuthStatus.FAILED),
    ],
)
async def test_a_move_the_transition_table_forbids_is_a_conflict_and_changes_nothing(
    store: Store, alice: str, old: AuthStatus, new: AuthStatus
) -> None:
    session = await store.auth_sessions.insert(new_auth_session(alice, status=old))
    with pytest.raises(Conflict, match="cannot go from"):
        await store.auth_sessions.transition(session.id, old, new)
    assert await store.auth_sessions.get(session.id) == session


async def test_transition_of_an_unknown_session_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="as-missing"):
        await store.auth_sessions.transition("as-missing", AuthStatus.PENDING, AuthStatus.CANCELLED)


# --- updates and listing -----------------------------------------------------------------------


async def test_update_sets_fields_but_never_the_status(store: Store, alice: str) -> None:
    session = await store.auth_sessions.insert(new_auth_session(alice))
    updated = await store.auth_sessions.update(session.id, login_url="https://x/login")
    assert updated.login_url == "https://x/login"
    assert updated.status is AuthStatus.PENDING
    with pytest.raises(InvalidInput, match="transition"):
        await store.auth_sessions.update(session.id, status=AuthStatus.COMPLETED)
    with pytest.raises(NotFound):
        await store.auth_sessions.update("as-missing", login_url="https://x")


@pytest.mark.parametrize(
    "fields", [{"colour": "blue"}, {"provider": "codex"}, {"completed_at": None}]
)
async def test_unknown_or_fixed_field_names_are_invalid_input(
    store: Store, alice: str, fields: dict[str, object]
) -> None:
    session = await store.auth_sessions.insert(new_auth_session(alice))
    with pytest.raises(InvalidInput, match="no updatable field"):
        await store.auth_sessions.transition(
            session.id, AuthStatus.PENDING, AuthStatus.CLI_VM_STARTING, **fields
        )
    with pytest.raises(InvalidInput, match="no updatable field"):
        await store.auth_sessions.update(session.id, **fields)
    assert await store.auth_sessions.get(session.id) == session


async def test_list_filters_by_user_and_status(store: Store) -> None:
    for user in ("alice", "bob"):
        await store.users.ensure(user)
    a1 = await store.auth_sessions.insert(new_auth_session("alice", provider="codex"))
    a2 = await store.auth_sessions.insert(
        new_auth_session("alice", provider="codex", status=AuthStatus.FAILED)
    )
    b1 = await store.auth_sessions.insert(new_auth_session("bob"))

    assert {s.id for s in await store.auth_sessions.list()} == {a1.id, a2.id, b1.id}
    assert {s.id for s in await store.auth_sessions.list(user_id="alice")} == {a1.id, a2.id}
    pending = await store.auth_sessions.list(statuses=[AuthStatus.PENDING])
    assert {s.id for s in pending} == {a1.id, b1.id}
    assert await store.auth_sessions.list(user_id="bob", statuses=TERMINAL) == []
