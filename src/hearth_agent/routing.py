"""The agent's small HTTP framework: requests, responses, routes and the one error mapping."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from hearth_agent.bodies import RequestBody
from hearth_agent.errors import (
    AgentError,
    InvalidInput,
    LengthRequired,
    MalformedJson,
    MethodNotAllowed,
)
from hearth_agent.jsontext import JsonTextError, decode_json

JSON_CONTENT_TYPE = "application/json"
UNMATCHED_ROUTE = "unmatched"


def _no_body_stream(max_bytes: int) -> RequestBody:
    raise LengthRequired("this request has no body to stream")


@dataclass(frozen=True)
class Request:
    """What an endpoint sees of an HTTP request; the body is read only when asked for: whole
    (``read_body``, bounded by the server's limit) or as a stream of at most ``max_bytes``
    (``open_body(max_bytes)``, for uploads)."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    authorization: str | None
    read_body: Callable[[], bytes] = field(repr=False)
    # Header names in lower case; only what endpoints need (Authorization is above).
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    open_body: Callable[[int], RequestBody] = field(default=_no_body_stream, repr=False)

    def header(self, name: str) -> str | None:
        """One request header by case-insensitive name, or None."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, body bytes, any extra headers, and what follows it.

    A streaming response (``stream`` set) has no Content-Length unless ``headers`` give one: the
    server writes and flushes each chunk as the iterator yields it (chunked, without a length;
    the last chunk only once the iterator ended well), then closes the connection; ``body`` is
    then unused.
    """

    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    # The agent stops (exit code 0) once this response has been sent; its supervisor restarts it.
    exit_after: bool = False
    stream: Iterable[bytes] | None = field(default=None, repr=False)


def json_response(status: int, payload: object) -> Response:
    """A JSON response with the given status."""
    return Response(status=status, body=json.dumps(payload).encode("utf-8"))


def error_response(
    status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """The one error body shape: ``{"error": {"code": ..., "message": ...}}``."""
    payload = {"error": {"code": code, "message": message}}
    return Response(status=status, body=json.dumps(payload).encode("utf-8"), headers=headers)


def response_for(error: AgentError) -> Response:
    """Map an AgentError to HTTP: its status and code, plus the headers some statuses need."""
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(error, MethodNotAllowed):
        headers = (("Allow", ", ".join(error.allow)),)
    elif error.http_status == 401:
        headers = (("WWW-Authenticate", 'Bearer realm="hearth-agent"'),)
    return error_response(error.http_status, error.code, error.message, headers)


def read_json(request: Request) -> object:
    """Read and strictly decode the request body, raising MalformedJson if it is not JSON."""
    body = request.read_body()
    if not body:
        raise MalformedJson("request body is empty; a JSON document is required")
    try:
        return decode_json(body)
    except JsonTextError as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from exc


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter: absent, ``false`` or ``0`` is False; ``true`` or ``1`` is True."""
    values = request.query.get(name)
    if not values:
        return False
    value = values[-1].lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise InvalidInput(f"query parameter '{name}' must be true or false")


Handler = Callable[[Request, Mapping[str, str]], Response]


@dataclass(frozen=True)
class Route:
    """One path template, the handler per method, and whether it is open without a token."""

    template: str
    handlers: Mapping[str, Handler]
    public: bool = False

    @property
    def pattern(self) -> re.Pattern[str]:
        """The template compiled to a regex; ``{name}`` matches one path segment."""
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        return re.compile(regex)

    @property
    def allow(self) -> tuple[str, ...]:
        """The methods the route accepts, for the Allow header."""
        return tuple(self.handlers)
