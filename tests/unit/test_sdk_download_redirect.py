"""A download's answer other than a success (a redirect to a login page, a proxy's "moved") is an
error, never the file's content: ``read`` raises, ``download`` and ``hearth files get`` leave
nothing behind, as the JSON calls already refuse it (answers scripted with
``httpx.MockTransport``, or served on loopback for the CLI)."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hearth.cli.client import ApiClient, ApiError
from hearth.sdk import AsyncHearth, Hearth, HearthApiError
from tests.conftest import hearth_cli
from tests.loopback_api import LOOPBACK, QuietHandler, listening
from tests.unit.test_sdk_download_archive import CLIENTS, URL, VM, tree

PAGE = b"<html>Moved: log in first</html>"
LOGIN = "https://hearth.example/login"


def redirecting(status: int) -> httpx.MockTransport:
    """The API of VM ``vm-1`` behind something that answers its files with ``status``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/vms/vm-1":
            return httpx.Response(200, content=VM, headers={"content-type": "application/json"})
        return httpx.Response(status, headers={"location": LOGIN}, content=PAGE)

    return httpx.MockTransport(handle)


async def read_and_download(client: str, status: int, local: Path) -> list[HearthApiError]:
    """What ``read("notes.txt")`` and ``download("notes.txt", local)`` raise, with the sync or
    the async client, when the files answer ``status``."""
    refused: list[HearthApiError] = []
    if client == "sync":
        with Hearth(URL, "k", transport=redirecting(status)) as sync:
            files = sync.vms.get("vm-1").files
            with pytest.raises(HearthApiError) as read:
                files.read("notes.txt")
            with pytest.raises(HearthApiError) as saved:
                files.download("notes.txt", local)
            refused += [read.value, saved.value]
        return refused
    async with AsyncHearth(URL, "k", transport=redirecting(status)) as aclient:
        afiles = (await aclient.vms.get("vm-1")).files
        with pytest.raises(HearthApiError) as aread:
            await afiles.read("notes.txt")
        with pytest.raises(HearthApiError) as asaved:
            await afiles.download("notes.txt", local)
        return [aread.value, asaved.value]


@CLIENTS
@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
async def test_a_redirect_is_an_error_and_never_saved_as_the_file(
    client: str, status: int, tmp_path: Path
) -> None:
    refused = await read_and_download(client, status, tmp_path / "notes.txt")

    assert [(error.status, error.code) for error in refused] == [(status, f"http_{status}")] * 2
    assert tree(tmp_path) == {}  # neither the file nor a partial one


class Moved(QuietHandler):
    """VM ``vm-1`` as the API shows it, and a 302 to a login page for anything else."""

    def do_GET(self) -> None:
        if self.path == "/api/vms/vm-1":
            self.answer(200, VM, {"content-type": "application/json"})
        else:
            self.answer(302, PAGE, {"location": LOGIN, "content-type": "text/html"})


@pytest.fixture
def moved_api() -> Iterator[str]:
    """``Moved`` served on loopback; its URL."""
    with listening(ThreadingHTTPServer(LOOPBACK, Moved)) as url:
        yield url


def test_hearth_files_get_of_a_redirect_fails_and_saves_nothing(
    moved_api: str, tmp_path: Path
) -> None:
    env = {"HEARTH_URL": moved_api, "HEARTH_API_KEY": "k"}

    saved = hearth_cli("files", "get", "vm-1", "notes.txt", str(tmp_path / "n"), env=env)
    shown = hearth_cli("files", "get", "vm-1", "notes.txt", "-", env=env)

    assert (saved.returncode, shown.returncode) == (1, 1)
    assert "http_302" in saved.stderr
    assert shown.stdout == ""
    assert tree(tmp_path) == {}


def test_the_cli_client_takes_a_redirect_for_an_error_not_the_answer(moved_api: str) -> None:
    with pytest.raises(ApiError) as moved:
        ApiClient(url=moved_api, key="k").request("GET", "/api/vms")
    assert moved.value.http_status == 302
