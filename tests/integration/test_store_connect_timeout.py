"""A PostgreSQL server that never answers (a host that drops packets, a port held by something
that accepts and stays silent): a new connection gives up after the store's connect timeout,
``POSTGRES_CONNECT_TIMEOUT_S``, the URL's own ``connect_timeout`` or ``PGCONNECT_TIMEOUT``,
rather than psycopg's 130 s, and says it timed out. Against a real silent listener on
loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from hearth.store.database import (
    POSTGRES_CONNECT_TIMEOUT_S,
    connect_timed_out,
    connect_timeout_s,
    create_store_engine,
)

# psycopg's shortest connect timeout (libpq counts whole seconds, 2 at least).
SHORT_S = 2
# What a test waits at most: far below psycopg's own 130 s, so the old code fails here.
GIVE_UP_S = 20


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener completes TCP's handshake (the kernel's backlog) and then
    never says a word, as PostgreSQL on a host that stopped answering."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def _seconds_to_time_out(url: str, **options: int) -> float:
    """How long ``create_store_engine(url, **options)`` takes to give up a new connection,
    asserting that it gave up as timed out (and within ``GIVE_UP_S``)."""
    engine = create_store_engine(url, **options)
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError) as failed:
            async with asyncio.timeout(GIVE_UP_S), engine.connect():
                pytest.fail("connected to a server that never answers")
    finally:
        await engine.dispose()
    assert connect_timed_out(failed.value)
    return time.monotonic() - started


async def test_a_silent_server_fails_the_connect_within_the_bound(silent_port: int) -> None:
    url = f"postgresql://hearth:pw@127.0.0.1:{silent_port}/hearth"
    elapsed = await _seconds_to_time_out(url, connect_timeout_s=SHORT_S)
    assert SHORT_S - 0.5 <= elapsed < SHORT_S + 3, elapsed


async def test_the_urls_connect_timeout_wins(silent_port: int) -> None:
    url = f"postgresql://hearth:pw@127.0.0.1:{silent_port}/hearth?connect_timeout={SHORT_S}"
    assert await _seconds_to_time_out(url, connect_timeout_s=GIVE_UP_S * 2) < SHORT_S + 3
    assert connect_timeout_s(url) == SHORT_S


async def test_pgconnect_timeout_is_the_operators_bound_when_the_url_sets_none(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq's variable, which psycopg reads: not overridden by the default bound.
    monkeypatch.setenv("PGCONNECT_TIMEOUT", str(SHORT_S))
    url = f"postgresql://hearth:pw@127.0.0.1:{silent_port}/hearth"
    assert await _seconds_to_time_out(url, connect_timeout_s=GIVE_UP_S * 2) < SHORT_S + 3
    assert connect_timeout_s(url) == SHORT_S
    # The URL's own still wins over it.
    assert connect_timeout_s(f"{url}?connect_timeout=7") == 7


async def test_the_driver_is_asked_for_the_default_bound(silent_port: int) -> None:
    # What the driver is handed for a URL without its own connect_timeout; the wait for the
    # silent server is cut short once it was handed that.
    url = f"postgresql://hearth:pw@127.0.0.1:{silent_port}/hearth"
    engine = create_store_engine(url)
    asked: dict[str, Any] = {}

    @event.listens_for(engine.sync_engine, "do_connect")
    def _seen(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        asked.update(params)

    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1), engine.connect():
                pytest.fail("connected to a server that never answers")
    finally:
        await engine.dispose()
    assert asked["connect_timeout"] == POSTGRES_CONNECT_TIMEOUT_S == connect_timeout_s(url)
    assert connect_timeout_s("sqlite:////var/lib/hearth/hearth.db") is None
