"""A webhook receiver on loopback for tests: records every delivery, answers as scripted.

Test modules take the ``receiver`` fixture (one listening receiver) with ``import *``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Received", "WebhookReceiver", "receiver"]


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        """The body as JSON."""
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


@dataclass
class WebhookReceiver:
    """``POST /hook`` on 127.0.0.1; answers ``statuses`` in turn (then 200) and keeps it all."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """Where the webhook points."""
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> Response:
        self.received.append(Received(dict(request.headers), await request.body()))
        self._arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        return Response(status_code=status)

    async def start(self) -> None:
        """Listen (on the port given, or a free one)."""
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None

    async def wait_for(
        self, event_type: str, *, count: int = 1, timeout_s: float = 10
    ) -> list[Received]:
        """The requests carrying ``event_type``, once there are ``count`` of them."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = [r for r in self.received if r.headers.get("x-hearth-event") == event_type]
                if len(found) >= count:
                    return found
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A receiver listening on loopback; stopped after the test."""
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()
