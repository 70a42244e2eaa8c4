"""Concurrent writers on one database never fail "database is locked" (SQLite and PostgreSQL).

On SQLite a transaction that begins deferred takes only a read lock at its first statement; if
another connection commits before its first write, the upgrade fails at once with "database
is locked" (the busy timeout does not apply to it: waiting could not help that snapshot). The
store's writing transactions that read first (a webhook's delete, a status change's compare)
met that whenever another write landed in between, and the API answered 500.
"""

from __future__ import annotations

import asyncio

import pytest

from hearth.errors import NotFound
from hearth.store import Store
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import new_webhook

ROUNDS = 40


async def test_writes_that_read_first_land_while_other_writers_commit(store: Store) -> None:
    hooks = [await store.webhooks.insert(new_webhook()) for _ in range(ROUNDS)]

    async def delete(webhook_id: str) -> None:
        await store.webhooks.delete(webhook_id)
        with pytest.raises(NotFound):  # gone: NotFound, not a lock error
            await store.webhooks.delete(webhook_id)

    writers = [store.users.ensure(f"user-{n}") for n in range(ROUNDS)]
    deletes = [delete(hook.id) for hook in hooks]
    mixed = [call for pair in zip(writers, deletes, strict=True) for call in pair]
    await asyncio.gather(*mixed)
    assert await store.webhooks.list() == []
    assert len(await store.users.list()) >= ROUNDS
