"""Opening the authorize URL through Chromium's DevTools HTTP endpoint, against a loopback stand-in.

The stand-in answers ``PUT /json/new?<url>`` as Chromium does (a JSON target). Chromium itself is
exercised in the Browser VM tests; here the agent's side of the exchange is pinned down.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx
import pytest

from hearth_agent.browser import DEFAULT_DEVTOOLS_PORT, DevToolsBrowser
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer

if TYPE_CHECKING:
    from conftest import AgentProcess

AUTHORIZE_URL = (
    "http://127.0.0.1:4444/auth?response_type=code&scope=openid%20offline_access"
    "&redirect_uri=http%3A%2F%2F127.0.0.1%3A1455%2Fcallback&state=a%2Bb"
)


class FakeDevTools(ThreadingHTTPServer):
    """Answers /json/new like Chromium, recording each request's method and raw target."""

    daemon_threads = True

    def __init__(self, port: int = 0, *, status: int = 200, body: bytes | None = None) -> None:
        super().__init__(("127.0.0.1", port), _DevToolsHandler)
        self.status = status
        self.body = body
        self.requests: list[tuple[str, str]] = []

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])


class _DevToolsHandler(BaseHTTPRequestHandler):
    server: FakeDevTools

    def _answer(self) -> None:
        path, _, query = self.path.partition("?")
        self.server.requests.append((self.command, unquote(query)))
        if path != "/json/new":
            self.send_error(404)
            return
        body = self.server.body
        if body is None:
            body = json.dumps({"id": "T1", "type": "page", "url": unquote(query)}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = _answer
    do_GET = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(server: FakeDevTools) -> Iterator[FakeDevTools]:
    """Serve ``server`` on a thread for the duration of a fixture."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def devtools() -> Iterator[FakeDevTools]:
    """A DevTools stand-in on a free loopback port."""
    with serving(FakeDevTools()) as server:
        yield server


def test_open_url_puts_the_whole_url_escaped_into_json_new(devtools: FakeDevTools) -> None:
    opened = DevToolsBrowser(port=devtools.port).open_url(AUTHORIZE_URL)

    assert opened is True
    # Chromium un-escapes the query once: what it parses must be the URL, escapes intact.
    assert devtools.requests == [("PUT", AUTHORIZE_URL)]


@pytest.mark.parametrize(
    ("status", "body"),
    [(405, b"Using unsafe HTTP verb"), (200, b"not json"), (200, b'{"no": "id"}')],
)
def test_open_url_reports_false_when_the_browser_does_not_take_the_url(
    status: int, body: bytes
) -> None:
    with serving(FakeDevTools(status=status, body=body)) as server:
        assert DevToolsBrowser(port=server.port).open_url(AUTHORIZE_URL) is False


def test_open_url_without_a_browser_returns_false_at_once() -> None:
    with socket.socket() as bound:  # bound, not listening: refused
        bound.bind(("127.0.0.1", 0))
        started = time.monotonic()
        opened = DevToolsBrowser(port=bound.getsockname()[1]).open_url(AUTHORIZE_URL)

    assert opened is False
    assert time.monotonic() - started < 1.0


def test_open_url_gives_up_on_a_browser_that_never_answers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        browser = DevToolsBrowser(port=silent.getsockname()[1], timeout_s=0.3)
        started = time.monotonic()
        opened = browser.open_url(AUTHORIZE_URL)

    assert opened is False
    assert time.monotonic() - started < 2.0


@pytest.fixture
def devtools_on_default_port() -> Iterator[FakeDevTools]:
    """A DevTools stand-in where the agent looks for Chromium (127.0.0.1:9222)."""
    try:
        server = FakeDevTools(DEFAULT_DEVTOOLS_PORT)
    except OSError as exc:
        pytest.skip(f"port {DEFAULT_DEVTOOLS_PORT} is taken on this host ({exc.strerror})")
    with serving(server):
        yield server


def test_agent_opens_the_authorize_url_in_the_vm_browser(
    devtools_on_default_port: FakeDevTools,
    agent: AgentProcess,
    agent_client: httpx.Client,
    oidc_server: OidcServer,
) -> None:
    started = agent_client.post(
        "/login/start",
        json={"provider": "oidc", "issuer": oidc_server.issuer, "client_id": "hearth-test"},
    ).json()

    assert started["opened_in_browser"] is True
    # Opened once. (Agents of tests on other pytest-xdist workers open their logins on this
    # host's 127.0.0.1:9222 too while this stand-in holds it: only this login's URL is counted.)
    ours = [r for r in devtools_on_default_port.requests if r[1] == started["authorize_url"]]
    assert ours == [("PUT", started["authorize_url"])]
    assert "browser_opened_url" in agent.log_text()
