"""The API key, and a password in the API's URL, never show in what the SDK raises or what the
command line prints: a key read from a file with its newline is sent without it, one no header
can carry is refused without being quoted, an error that quotes a header is told without its
text, and "cannot reach" masks a URL's user and password. Served on loopback: a small API that
records the Authorization header it gets."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from typer.testing import CliRunner

from hearth.cli import app
from hearth.cli.client import ApiClient
from hearth.errors import Unauthorized
from hearth.sdk import Hearth, HearthConfigError, HearthConnectionError
from tests.loopback_api import LOOPBACK, QuietHandler, listening
from tests.unit.test_sdk_download_archive import VM

KEY = "hk_G30Cqik7vVLB_fPMg2LQM_Nw5EwM6SuQIcn9079-BTQ"
SECRET = "G30Cqik7vVLB"  # a part of the key that must never be shown
PASSWORD = "pa55-w0rd"


class Recorded(NamedTuple):
    """A stand-in API's URL, and the Authorization header of each request it got."""

    url: str
    seen: list[str | None]


@pytest.fixture
def api() -> Iterator[Recorded]:
    """An API on loopback that answers VM ``vm-1`` and an empty list of VMs."""
    seen: list[str | None] = []

    class Recording(QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = VM if self.path == "/api/vms/vm-1" else json.dumps({"vms": []}).encode()
            self.answer(200, body, {"content-type": "application/json"})

    with listening(ThreadingHTTPServer(LOOPBACK, Recording)) as url:
        yield Recorded(url, seen)


@pytest.fixture
def no_cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the command line's config file is (none yet); no HEARTH_* in the environment."""
    config = tmp_path / "cli.json"
    monkeypatch.setattr("hearth.cli.client.CONFIG_FILE", config)
    monkeypatch.delenv("HEARTH_API_KEY", raising=False)
    monkeypatch.delenv("HEARTH_URL", raising=False)
    return config


def test_a_key_read_with_its_newline_reaches_the_api_without_it(
    api: Recorded, no_cli_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `hearth keys create > key` then Path("key").read_text() gives.
    with Hearth(api.url, KEY + "\n") as given:
        given.vms.get("vm-1")
    monkeypatch.setenv("HEARTH_URL", api.url)
    monkeypatch.setenv("HEARTH_API_KEY", f" {KEY}\r\n")
    with Hearth() as from_env:
        from_env.vms.get("vm-1")
    by_env = CliRunner().invoke(app, ["vm", "list"])
    monkeypatch.delenv("HEARTH_API_KEY")
    no_cli_config.write_text(json.dumps({"key": KEY + "\n"}))
    by_file = CliRunner().invoke(app, ["vm", "list"])

    assert (by_env.exit_code, by_file.exit_code) == (0, 0), by_env.output + by_file.output
    assert api.seen == [f"Bearer {KEY}"] * 4


BAD_KEYS = {
    "newline inside": f"{KEY[:20]}\n{KEY[20:]}",
    "header injected": f"{KEY}\r\nX-Admin: 1",
    "control character": f"{KEY}\x01",
    "beyond ASCII": f"{KEY}é",
}


@pytest.mark.parametrize("bad", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_a_key_no_header_can_carry_is_refused_without_being_shown(
    bad: str,
    api: Recorded,
    no_cli_config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(HearthConfigError) as refused, Hearth(api.url, bad) as client:
        client.vms.get("vm-1")
    monkeypatch.setenv("HEARTH_URL", api.url)
    monkeypatch.setenv("HEARTH_API_KEY", bad)
    cli = CliRunner().invoke(app, ["vm", "list"])
    with pytest.raises(Unauthorized) as cli_refused:
        ApiClient()

    assert "no HTTP header can carry" in str(refused.value)
    assert cli.exit_code == 1
    assert "(unauthorized): HEARTH_API_KEY holds a control character" in cli.stderr
    for shown in (str(refused.value), cli.stdout, cli.stderr, str(cli_refused.value)):
        assert SECRET not in shown
    assert api.seen == []


def test_an_error_that_quotes_a_header_is_told_without_its_text() -> None:
    # h11 quotes the header it refuses: an Authorization header carries the key.
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {KEY}\\n'")

    with Hearth("http://hearth.test", KEY, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(HearthConnectionError) as read:
            client.vms.get("vm-1")
        with pytest.raises(HearthConnectionError) as created:
            client.vms.create("cli")

    for error in (read.value, created.value):
        assert SECRET not in str(error)
        assert "LocalProtocolError: a header could not be sent as HTTP" in str(error)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cannot_reach_masks_the_user_and_password_in_the_url(
    no_cli_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://ann-user:{PASSWORD}@127.0.0.1:{closed_port()}"
    with Hearth(url, KEY) as client, pytest.raises(HearthConnectionError) as unreachable:
        client.vms.get("vm-1")

    def lose_answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer")

    losing = httpx.MockTransport(lose_answer)
    with (
        Hearth(url, KEY, transport=losing) as client,
        pytest.raises(HearthConnectionError) as unknown,
    ):
        client.vms.create("cli")
    monkeypatch.setenv("HEARTH_URL", url)
    monkeypatch.setenv("HEARTH_API_KEY", KEY)
    cli = CliRunner().invoke(app, ["vm", "list"])

    assert (unreachable.value.code, unknown.value.code) == ("unreachable", "outcome_unknown")
    assert cli.exit_code == 1
    masked = f"http://***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    for shown in (str(unreachable.value), str(unknown.value), cli.stderr):
        assert PASSWORD not in shown
        assert "ann-user" not in shown
        assert masked in shown
