"""The API's event streams carry a keepalive comment while nothing else comes, pass what comes
through as it is, in order, to its end, and end once the key that opened them no longer holds,
whether anything comes or not, and at once when the server stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import DisconnectionError

from hearth.api.streams import KEEPALIVE, KeyHolds, guarded, key_holds
from hearth.errors import NotFound, Unauthorized
from hearth.store import ApiKeyRecord
from hearth.store.records import utc_now


async def quiet_then(chunks: list[bytes], *, quiet_s: float) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(quiet_s)
        yield chunk


async def holds() -> bool:
    return True


async def test_a_quiet_stream_carries_keepalives_and_every_chunk_in_order() -> None:
    stream = guarded(quiet_then([b"a", b"b"], quiet_s=0.25), holds, keepalive_s=0.1)
    got = [c async for c in stream]
    assert [c for c in got if c != KEEPALIVE] == [b"a", b"b"]
    assert got.count(KEEPALIVE) >= 2
    assert got[0] == KEEPALIVE  # the quiet before the first chunk


async def test_a_busy_stream_gets_no_keepalive_and_closing_it_ends_its_source() -> None:
    ended = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x"
                await asyncio.sleep(0)
        finally:
            ended.set()

    stream = guarded(source(), holds, keepalive_s=10)
    got = [await anext(stream) for _ in range(3)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert got == [b"x"] * 3
    assert ended.is_set()


async def test_a_quiet_stream_ends_within_a_recheck_once_its_key_is_revoked() -> None:
    # Nothing comes for a minute; the key is revoked: the stream ends at the next look, not at
    # the next chunk (a quiet command kept a revoked key's stream open to its end).
    revoked = False

    async def key_holds() -> bool:
        return not revoked

    stream = guarded(quiet_then([b"late"], quiet_s=60), key_holds, recheck_s=0.1, keepalive_s=10)
    reader = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.3)
    assert not reader.done()
    revoked, started = True, time.monotonic()
    try:
        async with asyncio.timeout(2):
            await reader
    except StopAsyncIteration:
        pass
    assert time.monotonic() - started < 1.0


async def test_each_chunk_is_let_through_only_while_the_key_holds() -> None:
    answers = iter([True, True, False])

    async def key_holds() -> bool:
        return next(answers)

    source = quiet_then([b"a", b"b", b"c", b"d"], quiet_s=0)
    got = [c async for c in guarded(source, key_holds, each_chunk=True, recheck_s=60)]
    assert got == [b"a", b"b"]


async def test_a_quiet_stream_ends_at_once_when_the_server_stops_and_ends_its_source() -> None:
    # The event log's follower never ends by itself: a stopping server ends its stream.
    stopping, ended = asyncio.Event(), asyncio.Event()

    async def follower() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.sleep(3600)
            yield b"never"
        finally:
            ended.set()

    stream = guarded(follower(), holds, recheck_s=60, keepalive_s=60, stopping=stopping)
    assert await anext(stream) == b"first"
    reader = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    assert not reader.done()
    stopping.set()
    async with asyncio.timeout(1):
        try:
            await reader
        except StopAsyncIteration:
            pass
        else:
            raise AssertionError("a chunk came after the server began to stop")
    assert ended.is_set()


async def test_a_stream_opened_while_the_server_stops_ends_before_its_first_chunk() -> None:
    stopping = asyncio.Event()
    stopping.set()
    got = [c async for c in guarded(quiet_then([b"a"], quiet_s=0), holds, stopping=stopping)]
    assert got == []


async def test_a_binary_body_gets_no_keepalive_and_breaks_once_its_key_is_revoked() -> None:
    # A download: a keepalive would corrupt it, and an end without error would pass for whole.
    answers = iter([True, False])

    async def key_holds() -> bool:
        return next(answers)

    source = quiet_then([b"a", b"b", b"c"], quiet_s=0.2)
    got: list[bytes] = []
    with pytest.raises(Unauthorized):
        await read_into(
            guarded(source, key_holds, each_chunk=True, keepalive_s=0.05, binary=True), got
        )
    assert got == [b"a"]


async def read_into(stream: AsyncIterator[bytes], got: list[bytes]) -> None:
    async for chunk in stream:
        got.append(chunk)


class Keys:
    """The store's api_keys, failing each look with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def get(self, key_id: str) -> ApiKeyRecord:
        raise self.error


def looking_through(error: Exception) -> KeyHolds:
    store = SimpleNamespace(api_keys=Keys(error))
    key = ApiKeyRecord(id="k1", user_id="ann", prefix="hk_", is_admin=False, created_at=utc_now())
    return key_holds(store, key)  # type: ignore[arg-type]


async def test_a_store_outage_says_nothing_against_the_key() -> None:
    # A download read the key every second and broke off on a database blip.
    assert await looking_through(DisconnectionError("the server went away"))() is True


async def test_any_other_failure_to_look_at_the_key_still_ends_the_stream() -> None:
    with pytest.raises(NotFound):
        await looking_through(NotFound("no key k1"))()
