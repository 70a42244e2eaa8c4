"""``GET /api/vms/{id}/files/list`` over a CLI VM whose agent port answers as its root chooses,
in process on SQLite and PostgreSQL (the fake backend's VM, its agent address pointed at a
stand-in on loopback): a listing is refused (502 ``agent_error``) past what the agent ever
sends, its entries (``MAX_LISTED``) or its values counted before it is parsed, and one request
holds tens of MiB at most, never the hundreds a parsed flood of tiny values would take; the
largest listing a real agent sends still passes.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from hearth.agent_answers import MAX_LISTING_BYTES, MAX_LISTING_TOKENS
from hearth_agent.files import MAX_LISTED
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error, served

MIB = 1024 * 1024
TINY = b'{"name":"a","type":"file","size":0,"mode":"0","mtime":0}'
HEAD = b'{"path":"x","type":"dir","truncated":false,"entries":['
# What one request may hold at once: the answer's bytes (read, then copied once) and a little.
PEAK_BYTES = 64 * MIB


def agent_port(body: bytes) -> Starlette:
    """A stand-in whose ``GET /files/list`` answers ``body`` in 64 KiB pieces, none copied."""

    async def pieces() -> AsyncIterator[bytes]:
        view = memoryview(body)
        for start in range(0, len(body), 64 * 1024):
            yield view[start : start + 64 * 1024]  # type: ignore[misc]

    async def listing(request: Request) -> StreamingResponse:
        return StreamingResponse(pieces(), media_type="application/json")

    return Starlette(routes=[Route("/files/list", listing)])


async def list_files(api: Api, body: bytes) -> tuple[httpx.Response, int]:
    """The answer to listing a new VM's workspace whose agent answers ``body``, and the most
    memory Python held at once meanwhile (past what it held before)."""
    vm_id = await vm_for(api, "ann")
    async with served(agent_port(body)) as url:  # type: ignore[arg-type]
        api.ctl.vms.live_vm(vm_id).agent_url = url
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            path = f"/api/vms/{vm_id}/files/list?path=x"
            response = await api.client.get(path, headers=api.headers())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return response, peak - before


def flood(entry: bytes) -> bytes:
    """A listing of ``entry`` over and over, just under the byte cap."""
    count = (MAX_LISTING_BYTES - len(HEAD) - 2) // (len(entry) + 1)
    return HEAD + b",".join([entry] * count) + b"]}"


async def test_a_listing_of_tiny_entries_under_the_byte_cap_is_refused_unparsed(api: Api) -> None:
    body = flood(TINY)
    assert len(body) <= MAX_LISTING_BYTES
    response, peak = await list_files(api, body)
    message = assert_error(response, 502, "agent_error")["message"]
    assert f"more than {MAX_LISTING_TOKENS} JSON tokens" in message
    assert peak < PEAK_BYTES, peak // MIB


async def test_a_listing_of_empty_lists_is_refused_unparsed(api: Api) -> None:
    response, peak = await list_files(api, flood(b"[]"))
    assert_error(response, 502, "agent_error")
    assert peak < PEAK_BYTES, peak // MIB


async def test_a_listing_of_more_entries_than_the_agent_lists_is_refused(api: Api) -> None:
    body = HEAD + b",".join([TINY] * (MAX_LISTED + 1)) + b"]}"
    response, _ = await list_files(api, body)
    message = assert_error(response, 502, "agent_error")["message"]
    assert f"more than {MAX_LISTED} items" in message


async def test_the_largest_listing_an_agent_sends_is_answered(api: Api) -> None:
    # MAX_LISTED entries, each named by 255 control characters (6 bytes each in JSON), with the
    # longest size and mtime there are.
    entry = {
        "name": "\x01" * 255,
        "type": "symlink",
        "size": 2**63 - 1,
        "mode": "7777",
        "mtime": 1.7976931348623157e308,
        "target": None,
    }
    listing = {"path": "x", "type": "dir", "entries": [entry] * MAX_LISTED, "truncated": True}
    body = json.dumps(listing).encode()
    assert len(body) > 16 * 1000 * 1000
    response, peak = await list_files(api, body)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["entries"]) == MAX_LISTED
    assert response.json()["entries"][0]["name"] == "\x01" * 255
    assert peak < PEAK_BYTES, peak // MIB
