"""A cancelled caller never cuts a store call short (real SQLite and PostgreSQL).

The auth flow cancels tasks that are writing (a Browser VM booting beside a CLI VM that
failed); a cancel landing mid-statement used to invalidate the connection, which on SQLite kept
its write lock until garbage collection, and the next writers failed "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect

from hearth.store import Store
from tests.integration.store_fixtures import *  # noqa: F403


async def test_a_write_whose_caller_is_cancelled_lands_and_leaves_the_database_writable(
    store: Store,
) -> None:
    for turns in range(1, 25):  # the cancel lands at a different point of the call each time
        call = asyncio.ensure_future(store.users.ensure(f"user-{turns}"))
        for _ in range(turns):
            await asyncio.sleep(0)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        assert (await store.users.get(f"user-{turns}")).id == f"user-{turns}"
        assert (await store.users.ensure(f"next-{turns}")).id == f"next-{turns}"


async def test_a_call_cancelled_again_while_it_finishes_still_finishes_once(store: Store) -> None:
    call = asyncio.ensure_future(store.users.ensure("twice"))
    await asyncio.sleep(0)
    for _ in range(3):
        call.cancel()
        await asyncio.sleep(0)
    with contextlib.suppress(asyncio.CancelledError):
        await call
    assert call.cancelled()
    assert [u.id for u in await store.users.list()] == ["twice"]


def test_every_public_store_call_runs_to_completion(store: Store) -> None:
    repositories = [value for value in vars(store).values() if hasattr(value, "_engine")]
    assert len(repositories) >= 10
    for repository in repositories:
        for name, method in inspect.getmembers(repository, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                assert hasattr(method, "__wrapped__"), f"{type(repository).__name__}.{name}"
