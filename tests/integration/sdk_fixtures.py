"""The API for the SDK's tests: in process (for ``httpx.ASGITransport``) and served for real by
uvicorn on loopback, in front of it a TCP proxy that can cut a connection mid-stream.

Every VM is a ``AgentBackend`` VM, whose agent is a real process on loopback: commands really
run. ``live`` serves the app on its own thread's event loop (``tests.background``) so that the
synchronous client, which blocks, can call it; ``DroppingProxy`` runs on that loop too.

Layered by lifecycle stage: ``sdk_settings`` → ``inproc`` (the app in the test's loop) or
``live`` (served; its URL, the proxy's URL, keys for two users).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.background import in_background_loop
from tests.integration.api_fixtures import Api, running_api, served
from tests.integration.conftest import AgentLauncher

__all__ = ["Live", "inproc", "live", "sdk_settings"]

SERVE_DEADLINE_S = 60.0
# An SSE event ends with an empty line; the API's headers (CRLF) and JSON bodies never hold one.
_EVENT_END = b"\n\n"


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the API. ``cut_after(n, …)`` arms it: once ``n``
    more SSE events have gone through to the client, that connection is aborted on both sides
    (the client sees it break mid-body, the server sees its client gone); each further number
    arms the next cut. ``heads`` keeps what clients sent, to check the headers of resumes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.heads: list[bytes] = []
        self.cuts_done = 0
        self._cuts: list[int] = []
        self._events = 0  # events through since the last arm or cut
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen; the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()

    def cut_after(self, *events: int) -> None:
        """Arm cuts: the first after ``events[0]`` events, then the next after ``events[1]``…"""
        with self._lock:
            self._cuts, self._events = list(events), 0

    def _cut_at(self, chunk: bytes, tail: bytes) -> int | None:
        """Where in ``chunk`` the armed cut falls (None: forward all of it)."""
        with self._lock:
            if not self._cuts:
                return None
            if self._cuts[0] == 0:
                return 0
            seen = tail + chunk
            start = 0
            while (found := seen.find(_EVENT_END, start)) >= 0:
                start = found + len(_EVENT_END)
                self._events += 1
                if self._events == self._cuts[0]:
                    return start - len(tail)
            return None

    def _did_cut(self) -> None:
        with self._lock:
            self._cuts.pop(0)
            self._events = 0
            self.cuts_done += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        ends = [writer, up_writer]
        self._open.update(ends)
        upward = asyncio.create_task(self._upward(reader, up_writer))
        try:
            tail = b""
            while chunk := await up_reader.read(65536):
                cut = self._cut_at(chunk, tail)
                if cut is not None:
                    writer.write(chunk[:cut])
                    await writer.drain()
                    self._did_cut()
                    for end in ends:
                        end.transport.abort()
                    return
                tail = chunk[-1:]
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            upward.cancel()
            for end in ends:
                end.close()
                self._open.discard(end)

    async def _upward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                self.heads.append(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.close()


@dataclass
class Live:
    """The API served on loopback: straight (``url``) and through the proxy (``proxy_url``)."""

    api: Api
    url: str
    proxy_url: str
    proxy: DroppingProxy
    keys: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def serving(settings: Settings, backend: AgentBackend, root: Path) -> AsyncIterator[Live]:
    """The app with its lifespan entered, served by uvicorn, with the proxy; keys for ann and
    bob. Leaving stops them in reverse order."""
    async with running_api(settings, backend, root / "image") as api, served(api.app) as url:
        proxy = DroppingProxy(int(url.rsplit(":", 1)[1]))
        try:
            proxy_port = await proxy.start()
            live = Live(api, url, f"http://127.0.0.1:{proxy_port}", proxy)
            live.keys = {user: await api.user_key(user) for user in ("ann", "bob")}
            yield live
        finally:
            await proxy.stop()


@pytest.fixture
def sdk_settings(tmp_path: Path) -> Settings:
    """Settings on a private state dir and its SQLite database (the SDK's tests are about the
    client; the store is tested on SQLite and PostgreSQL elsewhere)."""
    return Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})


@pytest.fixture
async def inproc(
    sdk_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The app in this test's event loop, over VMs with real agents."""
    async with running_api(sdk_settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


@pytest.fixture
def live(sdk_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path) -> Iterator[Live]:
    """The app served on loopback from a thread of its own, over VMs with real agents."""
    backend = AgentBackend(agent_launcher)
    with in_background_loop(
        lambda: serving(sdk_settings, backend, tmp_path), timeout_s=SERVE_DEADLINE_S
    ) as served:
        yield served
