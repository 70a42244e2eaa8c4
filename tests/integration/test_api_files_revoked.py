"""A workspace download (``GET /api/vms/{id}/files``) whose key is revoked while it streams,
in process over real HTTP (uvicorn on loopback), on SQLite and PostgreSQL, with a real agent
on loopback: it breaks off short of its end, as every other stream ends on revocation."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest

from hearth.api import streams
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, served
from tests.integration.sdk_fixtures import *  # noqa: F403
from tests.integration.test_api_files import MIB, files_api, new_vm, workspace

__all__ = ["files_api"]


async def read_on(chunks: AsyncIterator[bytes], got: list[int]) -> None:
    """Read ``chunks`` to their end, noting each one's length in ``got``."""
    async for chunk in chunks:
        got.append(len(chunk))


async def test_a_download_whose_key_is_revoked_breaks_off_short_of_its_end(
    files_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is looked at before every chunk (not once a second): the break does not hang on
    # how fast the test reads.
    monkeypatch.setattr(streams, "KEY_RECHECK_S", 0.0)
    api = files_api
    vm_id, ann = await new_vm(api, "ann")
    size = 64 * MIB
    (workspace(api, vm_id) / "big.bin").write_bytes(os.urandom(size))
    keys = (await api.client.get("/api/keys", headers=api.headers())).json()["keys"]
    (key_id,) = [k["id"] for k in keys if k["userId"] == "ann"]
    got: list[int] = []
    files = f"/api/vms/{vm_id}/files"
    async with (
        served(api.app) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as client,
        client.stream("GET", files, headers=ann) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["x-hearth-file-type"] == "dir"  # a chunked tar
        chunks = answer.aiter_raw()
        got.append(len(await anext(chunks)))
        revoked = await api.client.delete(f"/api/keys/{key_id}", headers=api.headers())
        assert revoked.status_code == 200
        # Broken (no last chunk), not a smaller whole tar: what was sent stays what it is.
        with pytest.raises(httpx.RemoteProtocolError):
            await read_on(chunks, got)
    assert sum(got) < size
