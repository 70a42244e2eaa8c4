"""The agent's ``oidc`` refresh when things fail, against the real OAuth server (npm
oidc-provider, refresh tokens rotating on use: reusing a spent one revokes the grant).

A refreshed document the disk refuses is held, served and written later, never refreshed again
with the spent token; failing rounds back off, and a success brings back the short interval.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import io
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth_agent.app import AgentApp
from hearth_agent.claim import AuthGate
from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.oidc_refresh import OidcRefresher
from hearth_agent.providers import get_provider
from hearth_agent.routing import Request
from hearth_agent.storage import CredentialStore
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer
from tests.integration.test_agent_oidc_refresh import configure
from tests.integration.test_api_credentials import oidc_login

OIDC = get_provider("oidc")
# linux/fs.h: FS_IOC_GETFLAGS / FS_IOC_SETFLAGS (x86_64 and arm64) and FS_IMMUTABLE_FL.
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


@pytest.fixture
def document(agent_client: httpx.Client, short_lived_oidc_server: OidcServer) -> dict[str, Any]:
    """A fresh document from a real login (through another agent, as in a Browser VM)."""
    return oidc_login(agent_client, short_lived_oidc_server)


def _set_immutable(directory: Path, on: bool) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] = flags[0] | FS_IMMUTABLE_FL if on else flags[0] & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
    finally:
        os.close(fd)


@contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """``directory`` takes no new entry, for real: mode 0500 for a user; for root (whom modes
    do not stop) the immutable attribute. Skips where neither holds."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    try:
        _set_immutable(directory, True)
    except OSError as exc:
        pytest.skip(f"cannot make {directory} immutable here: {exc.strerror}")
    try:
        yield
    finally:
        _set_immutable(directory, False)


def agent_over(store: CredentialStore, refresher: OidcRefresher, logger: JsonLogger) -> AgentApp:
    """The agent's app around ``store``, so its credential reads are the real route's."""
    return AgentApp(
        store=store,
        gate=AuthGate.from_options(
            token_file=None, insecure=True, allow_claim=False, logger=logger
        ),
        metrics=AgentMetrics(version="0.1.0", providers=("oidc",)),
        logger=logger,
        refresher=refresher,
    )


def served(app: AgentApp) -> dict[str, Any]:
    """The document ``GET /credentials/oidc?content=true`` answers (the controller's pull-back)."""
    request = Request(
        method="GET",
        path="/credentials/oidc",
        query={"content": ["true"]},
        authorization=None,
        read_body=lambda: b"",
    )
    _, response = app.dispatch(request)
    assert response.status == 200, response.body
    answer = json.loads(response.body)
    assert isinstance(answer["document"], dict)
    return answer["document"]


def test_a_refreshed_document_the_disk_refuses_is_held_served_and_written_later(
    tmp_path: Path, document: dict[str, Any], short_lived_oidc_server: OidcServer
) -> None:
    log = io.StringIO()
    logger = JsonLogger(stream=log)
    store = CredentialStore(home=tmp_path / "home", logger=logger)
    store.write(OIDC, json.dumps(document).encode())
    refresher = OidcRefresher(store=store, logger=logger)
    app = agent_over(store, refresher, logger)
    assert configure(refresher, {"proxy": None, "margin_s": 3600}) == 200
    path = store.path_of(OIDC)

    with unwritable(path.parent):
        # The issuer rotates the refresh token, then the write fails.
        assert refresher.check_once() == "failing"
        assert refresher.status()["error"] == "storage_error"
        assert json.loads(path.read_bytes()) == document
        held = served(app)
        assert held["refresh_token"] != document["refresh_token"]
        assert refresher.status()["sha256"] == store.read(OIDC).sha256  # type: ignore[union-attr]
        # The next round (the held document due too: a 4 s lifetime, an hour's margin) writes
        # again; it does not refresh, with the spent token or the held one.
        time.sleep(0.1)
        assert refresher.check_once() == "failing"
        assert served(app) == held

    assert refresher.check_once() == "refreshed"
    assert json.loads(path.read_bytes()) == held
    assert refresher.status()["refreshes"] == 1
    assert (path.stat().st_mode & 0o777) == 0o600
    # The grant is alive: the spent token was never replayed (that would have revoked it).
    again = asyncio.run(short_lived_oidc_server.refresh_grant(held["refresh_token"]))
    assert again.status_code == 200, again.text
    logged = log.getvalue()
    assert "oidc_refresh_unsaved" in logged
    for secret in (document, held):
        for name in ("access_token", "refresh_token", "id_token"):
            if name in secret:
                assert secret[name] not in logged


def test_a_delivery_while_a_refreshed_document_is_held_wins(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    logger = JsonLogger(stream=io.StringIO())
    store = CredentialStore(home=tmp_path / "home", logger=logger)
    store.write(OIDC, json.dumps(document).encode())
    refresher = OidcRefresher(store=store, logger=logger)
    configure(refresher, {"proxy": None, "margin_s": 3600})
    with unwritable(store.path_of(OIDC).parent):
        assert refresher.check_once() == "failing"
    delivered = {**document, "access_token": "delivered"}
    store.write(OIDC, json.dumps(delivered).encode())
    stored = store.read(OIDC)
    assert stored is not None
    assert stored.saved
    assert json.loads(stored.content) == delivered
    assert store.save_held(OIDC) is None  # nothing held any more


class RefusingProxy:
    """A loopback egress proxy that refuses every tunnel (403) and notes when each came."""

    def __init__(self) -> None:
        self.times: list[float] = []
        times = self.times

        class Handler(BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                times.append(time.monotonic())
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, deadline_s: float = 20.0) -> list[float]:
        """The times of the first ``count`` tunnels asked for; fails after ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        while len(self.times) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{len(self.times)} tunnels asked for in {deadline_s}s, not {count}")
            time.sleep(0.02)
        return self.times[:count]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_failing_rounds_back_off_and_a_refresh_brings_back_the_interval(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    skew = [0.0]  # moved past the least gap between two refreshes
    store = CredentialStore(home=tmp_path / "home", logger=JsonLogger(stream=io.StringIO()))
    store.write(OIDC, json.dumps(document).encode())
    refresher = OidcRefresher(
        store=store,
        logger=JsonLogger(stream=io.StringIO()),
        interval_s=0.05,
        max_backoff_s=0.8,
        clock=lambda: time.time() + skew[0],
    )
    proxy = RefusingProxy()
    try:
        configure(refresher, {"proxy": proxy.url, "margin_s": 3600})
        refresher.start()
        times = proxy.wait_for(7)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # 0.05 after the first failure, then doubling, capped at 0.8 (lower bounds only: a
        # busy machine only makes them longer).
        for gap, least in zip(gaps, [0.05, 0.1, 0.2, 0.4, 0.8, 0.8], strict=True):
            assert gap >= least * 0.9, gaps
        assert refresher.status()["state"] == "failing"

        configure(refresher, {"proxy": None, "margin_s": 3600})
        deadline = time.monotonic() + 10
        while refresher.status()["refreshes"] == 0:
            assert time.monotonic() < deadline, refresher.status()
            time.sleep(0.02)
        skew[0] = 3600.0
        seen = len(proxy.times)
        configure(refresher, {"proxy": proxy.url, "margin_s": 3600})
        first, second = proxy.wait_for(seen + 2)[seen:]
        assert second - first < 0.8  # back to the interval, not the cap
    finally:
        refresher.stop()
        proxy.close()
