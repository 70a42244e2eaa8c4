"""``ProviderStandIn``: what every provider's stand-in shares -- request log, bearer check, script.

A subclass names the provider's hosts, its endpoints (HTTP, and WebSocket where the provider
has one), and its error bodies; this class wraps each endpoint so that every request is recorded
first and a wrong bearer gets the provider's 401 before the endpoint runs. Requests to paths no
endpoint serves are recorded too and get the provider's 404, so a test (or a person reading
``requests``) sees everything a CLI tried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from hearth.bench.errors import BenchError
from hearth.bench.standins.recording import RecordedRequest
from hearth.bench.standins.scenarios import Scenario, Script

Handler = Callable[[RecordedRequest], Awaitable[Response]]
SocketHandler = Callable[[WebSocket, RecordedRequest], Awaitable[None]]

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass(frozen=True)
class Endpoint:
    """One HTTP path; ``bearer=False`` for one that takes no token (a token refresh)."""

    path: str  # Starlette's syntax
    methods: tuple[str, ...]
    handler: Handler
    bearer: bool = True


@dataclass(frozen=True)
class SocketEndpoint:
    """One WebSocket path; the handler gets the socket before it is accepted."""

    path: str
    handler: SocketHandler


class StreamCut(BenchError):
    """Raised inside a response stream to end the connection without finishing the body."""

    code = "stream_cut"
    http_status = 500


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: an optional ``event:`` name and a JSON ``data:`` payload."""

    data: object
    event: str | None = None

    def encode(self) -> bytes:
        """The event on the wire, blank line included."""
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


class ProviderStandIn:
    """A provider's API on loopback: serves :attr:`hosts`, checks the bearer, follows a script."""

    hosts: tuple[str, ...] = ()

    def __init__(self, *, expected_token: str, script: Script | None = None) -> None:
        self.expected_token = expected_token
        self.script = script if script is not None else Script()
        self.requests: list[RecordedRequest] = []

    # -- what a provider module defines ------------------------------------------------------

    def endpoints(self) -> Sequence[Endpoint]:
        """The HTTP paths served."""
        raise NotImplementedError

    def socket_endpoints(self) -> Sequence[SocketEndpoint]:
        """The WebSocket paths served; none unless the provider has one."""
        return ()

    def unauthorized(self, request: RecordedRequest) -> Response:
        """The provider's 401 for a missing or wrong token."""
        raise NotImplementedError

    def not_found(self, request: RecordedRequest) -> Response:
        """The provider's 404 for a path the stand-in does not serve."""
        raise NotImplementedError

    def is_model_request(self, request: RecordedRequest) -> bool:
        """Whether ``request`` asks the model for an answer (the requests the script answers)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """The recorded requests that asked the model for an answer, in order."""
        return [r for r in self.requests if self.is_model_request(r)]

    def bearers(self) -> set[str | None]:
        """Every bearer token the stand-in received on a path that takes one."""
        return {r.bearer for r in self.requests if r.bearer is not None}

    def app(self) -> Starlette:
        """The ASGI app that serves this stand-in."""
        routes: list[BaseRoute] = [
            WebSocketRoute(s.path, self._socket(s)) for s in self.socket_endpoints()
        ]
        routes += [Route(e.path, self._http(e), methods=list(e.methods)) for e in self.endpoints()]
        routes.append(Route("/{rest:path}", self._unserved, methods=_ALL_METHODS))
        return Starlette(routes=routes)

    def record(self, request: RecordedRequest) -> RecordedRequest:
        """Add ``request`` to the log (a handler records WebSocket messages this way)."""
        self.requests.append(request)
        return request

    def _http(self, served: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            recorded = self.record(await RecordedRequest.read(request))
            if served.bearer and recorded.bearer != self.expected_token:
                return self.unauthorized(recorded)
            return await served.handler(recorded)

        return endpoint

    def _socket(self, served: SocketEndpoint) -> Callable[[WebSocket], Awaitable[None]]:
        async def endpoint(websocket: WebSocket) -> None:
            handshake = self.record(RecordedRequest.handshake(websocket))
            if handshake.bearer != self.expected_token:
                await websocket.send_denial_response(self.unauthorized(handshake))
                return
            await served.handler(websocket, handshake)

        return endpoint

    async def _unserved(self, request: Request) -> Response:
        return self.not_found(self.record(await RecordedRequest.read(request)))

    async def paced(
        self, events: Iterable[SseEvent], *, cut_after: int | None = None
    ) -> AsyncIterator[SseEvent]:
        """``events``, :attr:`Script.chunk_delay` apart; with ``cut_after``, :class:`StreamCut`
        is raised once that many are out."""
        delay = self.script.chunk_delay
        for sent, event in enumerate(events):
            if cut_after is not None and sent >= cut_after:
                raise StreamCut(f"stream cut after {sent} events, as scripted")
            if sent and delay:
                await asyncio.sleep(delay)
            yield event

    def sse(
        self,
        events: Iterable[SseEvent],
        *,
        cut_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> StreamingResponse:
        """``events`` as a ``text/event-stream`` (see :meth:`paced`)."""

        async def body() -> AsyncIterator[bytes]:
            async for event in self.paced(events, cut_after=cut_after):
                yield event.encode()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **(headers or {})},
        )


def oauth_error(error: str, description: str) -> Response:
    """An OAuth 2 error response (RFC 6749, section 5.2): HTTP 400, ``error`` and its
    ``error_description``."""
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def cut_point(scenario: Scenario, events: int) -> int | None:
    """Where a ``dropped`` stream of ``events`` events is cut: past its first half, so the
    client has begun to show the answer; None for every other scenario."""
    return max(1, events // 2) if scenario is Scenario.DROPPED else None
