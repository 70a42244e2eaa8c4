"""``vm.files.write``, ``download`` and ``read`` take their options by keyword, by these names
only: a misspelt one raises TypeError before any request, rather than being dropped unseen (a
file written without the mode asked for, a download without its bound).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.sdk import AsyncHearth, Hearth
from hearth.sdk._files import AsyncFiles, Files
from hearth.sdk._transfer import MAX_DOWNLOAD_BYTES
from tests.unit.test_sdk_download_archive import CLIENTS, URL, VM

MISSPELT = pytest.mark.parametrize(
    ("method", "args", "option"),
    [
        ("write", ("a.txt", b"hi"), {"mdoe": 0o600}),
        ("download", ("proj", Path("out")), {"max_byte": 1000}),
        ("read", ("a.txt",), {"max_byte": 1000}),
    ],
    ids=["write-mdoe", "download-max_byte", "read-max_byte"],
)


@CLIENTS
@MISSPELT
async def test_a_misspelt_option_raises_type_error_before_any_request(
    client: str, method: str, args: tuple[Any, ...], option: dict[str, int]
) -> None:
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/vms/vm-1":
            return httpx.Response(200, content=VM, headers={"content-type": "application/json"})
        sent.append(request.url.path)
        return httpx.Response(500)

    transport = httpx.MockTransport(handle)
    unexpected = f"unexpected keyword argument '{next(iter(option))}'"
    if client == "sync":
        with Hearth(URL, "k", transport=transport) as sync:
            files = sync.vms.get("vm-1").files
            with pytest.raises(TypeError, match=unexpected):
                getattr(files, method)(*args, **option)
    else:
        async with AsyncHearth(URL, "k", transport=transport) as aclient:
            afiles = (await aclient.vms.get("vm-1")).files
            with pytest.raises(TypeError, match=unexpected):
                await getattr(afiles, method)(*args, **option)
    assert sent == []


@pytest.mark.parametrize("files", [Files, AsyncFiles])
def test_the_options_are_keyword_only_with_the_documented_defaults(files: type[Any]) -> None:
    def options(method: str) -> dict[str, object]:
        parameters = inspect.signature(getattr(files, method)).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}

    assert options("write") == {"mode": None, "progress": None}
    assert options("download") == {"progress": None, "max_bytes": MAX_DOWNLOAD_BYTES}
    # Every read of a file is bounded as a directory's download is, unless told otherwise.
    assert options("read") == {"max_bytes": MAX_DOWNLOAD_BYTES}
    assert options("read_stream") == {"max_bytes": MAX_DOWNLOAD_BYTES}
