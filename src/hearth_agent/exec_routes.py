"""The exec endpoints: start a command, stream its events (SSE), feed its stdin, kill it.

    POST /exec                      {"cmd", "env"?, "cwd"?, "stdin"?, "stdin_open"?, "timeout_s"?,
                                     "max_running"?, "pty"?: {"cols", "rows"}}
                                    → 201 {"exec_id", "pid"}
    GET  /exec/{exec_id}            → 200 the exec's status
    GET  /exec/{exec_id}/events     ?after=N or Last-Event-ID: N → text/event-stream
    POST /exec/{exec_id}/stdin      {"data"?, "encoding"?: "utf-8"|"base64", "eof"?} → 200
    POST /exec/{exec_id}/kill       {"signal"?: "SIGKILL"|"SIGTERM"|"SIGINT"} → 200
    POST /exec/{exec_id}/resize     {"cols", "rows"} → 200 (an exec started with "pty"; else 409)

Each event is written as ``id: N``, ``event: stdout|stderr|exit``, ``data: <one-line JSON>`` and a
blank line; a comment line (``: keepalive``) goes out when nothing happened for a while. The
stream ends after the exit event. Reading ``after=N`` acknowledges every event up to N (see
``exec_events``), so a client that reconnects sends the last id it received. With ``pty`` the
command runs on a pseudo-terminal (``exec_pty``): its output is one ``stdout`` stream, its stdin
is always open, and ``eof`` sends the terminal's end-of-file character.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

from hearth_agent.errors import ExecEventsGone, InvalidInput, MalformedJson
from hearth_agent.exec_events import ExecEvent
from hearth_agent.exec_pty import PtySize
from hearth_agent.execs import ExecRegistry, ExecSpec
from hearth_agent.jsontext import JsonTextError, decode_json
from hearth_agent.routing import Request, Response, Route, json_response, read_json

EVENT_STREAM_CONTENT_TYPE = "text/event-stream"
KEEPALIVE_S = 15.0
KILL_SIGNALS = {
    "SIGKILL": signal.SIGKILL,
    "SIGTERM": signal.SIGTERM,
    "SIGINT": signal.SIGINT,
}
_START_FIELDS = frozenset(
    {"cmd", "env", "cwd", "stdin", "stdin_open", "timeout_s", "max_running", "pty"}
)
_STDIN_FIELDS = frozenset({"data", "encoding", "eof"})
_KILL_FIELDS = frozenset({"signal"})
_EVENT_ID = re.compile(r"[0-9]{1,18}")


class ExecRoutes:
    """The exec endpoints over one ExecRegistry."""

    def __init__(self, *, execs: ExecRegistry, keepalive_s: float = KEEPALIVE_S) -> None:
        self._execs = execs
        self._keepalive_s = keepalive_s

    def routes(self) -> tuple[Route, ...]:
        """The routes to mount in the app's table (all need the bearer token)."""
        return (
            Route("/exec", {"POST": self._start}),
            Route("/exec/{exec_id}", {"GET": self._status}),
            Route("/exec/{exec_id}/events", {"GET": self._events}),
            Route("/exec/{exec_id}/stdin", {"POST": self._stdin}),
            Route("/exec/{exec_id}/kill", {"POST": self._kill}),
            Route("/exec/{exec_id}/resize", {"POST": self._resize}),
        )

    def _start(self, request: Request, params: Mapping[str, str]) -> Response:
        spec = parse_exec_spec(read_json(request))
        started = self._execs.start(spec)
        return json_response(201, {"exec_id": started.exec_id, "pid": started.pid})

    def _status(self, request: Request, params: Mapping[str, str]) -> Response:
        return json_response(200, self._execs.get(params["exec_id"]).view())

    def _events(self, request: Request, params: Mapping[str, str]) -> Response:
        running = self._execs.get(params["exec_id"])
        after = resume_point(request)
        events = running.log.follow(after, keepalive_s=self._keepalive_s)
        return Response(
            status=200,
            body=b"",
            content_type=EVENT_STREAM_CONTENT_TYPE,
            stream=_event_stream(events),
        )

    def _stdin(self, request: Request, params: Mapping[str, str]) -> Response:
        running = self._execs.get(params["exec_id"])
        body = _object(read_json(request), "/exec/{exec_id}/stdin", _STDIN_FIELDS)
        data = _stdin_bytes(body)
        eof = _flag(body, "eof")
        if not data and not eof:
            raise InvalidInput("send 'data', 'eof': true, or both")
        queued = running.write_stdin(data, eof=eof)
        return json_response(200, {"exec_id": running.exec_id, "queued_bytes": queued})

    def _kill(self, request: Request, params: Mapping[str, str]) -> Response:
        running = self._execs.get(params["exec_id"])
        body = _object(_optional_json(request), "/exec/{exec_id}/kill", _KILL_FIELDS)
        name = body.get("signal", "SIGKILL")
        if not isinstance(name, str) or name not in KILL_SIGNALS:
            raise InvalidInput(f"field 'signal' must be one of {', '.join(KILL_SIGNALS)}")
        signalled = running.kill(KILL_SIGNALS[name])
        return json_response(
            200,
            {"exec_id": running.exec_id, "signalled": signalled, "status": running.status.value},
        )

    def _resize(self, request: Request, params: Mapping[str, str]) -> Response:
        running = self._execs.get(params["exec_id"])
        size = PtySize.parse(read_json(request), "the /exec/{exec_id}/resize body")
        running.resize(size)
        return json_response(200, {"exec_id": running.exec_id, "pty": size.as_json()})


def resume_point(request: Request) -> int:
    """The id to resume after: the Last-Event-ID header if sent, else ``?after=``, else 0."""
    header = request.header("Last-Event-ID")
    values = request.query.get("after")
    text = header.strip() if header is not None else (values[-1] if values else "0")
    if not _EVENT_ID.fullmatch(text):
        source = "header 'Last-Event-ID'" if header is not None else "query parameter 'after'"
        raise InvalidInput(f"{source} must be an event id (a non-negative integer)")
    return int(text)


def sse_event(event: ExecEvent) -> bytes:
    """One event in the text/event-stream format."""
    data = json.dumps(event.payload, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {data}\n\n".encode()


def _event_stream(events: Iterator[ExecEvent | None]) -> Iterator[bytes]:
    try:
        for event in events:
            yield b": keepalive\n\n" if event is None else sse_event(event)
    except ExecEventsGone as exc:
        # Another reader acknowledged events this one had not reached: say so, then end.
        error = {"error": {"code": exc.code, "message": exc.message}}
        yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()


def parse_exec_spec(body: object) -> ExecSpec:
    """Validate a POST /exec body into an ExecSpec; InvalidInput names the first bad field."""
    fields = _object(body, "/exec", _START_FIELDS)
    if "cmd" not in fields:
        raise InvalidInput("field 'cmd' is required: a non-empty list of strings")
    stdin = fields.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise InvalidInput("field 'stdin' must be a string (the text written to stdin)")
    return ExecSpec(
        cmd=_cmd(fields["cmd"]),
        env=_env(fields.get("env")),
        cwd=_cwd(fields.get("cwd")),
        stdin=stdin.encode("utf-8") if stdin is not None else None,
        stdin_open=_flag(fields, "stdin_open"),
        timeout_s=_timeout(fields.get("timeout_s")),
        max_running=_positive_int(fields.get("max_running"), "max_running"),
        pty=PtySize.parse(fields["pty"]) if fields.get("pty") is not None else None,
    )


def _optional_json(request: Request) -> object:
    """The JSON body, or an empty object when the body is empty."""
    body = request.read_body()
    if not body:
        return {}
    try:
        return decode_json(body)
    except JsonTextError as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from exc


def _object(body: object, route: str, allowed: frozenset[str]) -> dict[str, object]:
    if not isinstance(body, dict):
        raise InvalidInput(f"{route} body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise InvalidInput(f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")
    return body


def _cmd(value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(arg, str) and "\0" not in arg for arg in value)
    ):
        raise InvalidInput("field 'cmd' must be a non-empty list of strings")
    if not value[0]:
        raise InvalidInput("field 'cmd': the program (first element) is empty")
    return tuple(value)


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("field 'env' must be an object of strings")
    for name, text in value.items():
        if not isinstance(text, str):
            raise InvalidInput(f"field 'env': the value of {name!r} must be a string")
        if not name or "=" in name or "\0" in name or "\0" in text:
            raise InvalidInput(f"field 'env': {name!r} is not a valid variable")
    return dict(value)


def _cwd(value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidInput("field 'cwd' must be a directory path")
    return Path(value)


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput("field 'timeout_s' must be a number of seconds")
    return float(value)


def _positive_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"field '{name}' must be a whole number of at least 1")
    return value


def _flag(body: Mapping[str, object], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"field '{name}' must be true or false")
    return value


def _stdin_bytes(body: Mapping[str, object]) -> bytes:
    data = body.get("data", "")
    encoding = body.get("encoding", "utf-8")
    if not isinstance(data, str):
        raise InvalidInput("field 'data' must be a string")
    if encoding == "utf-8":
        return data.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise InvalidInput("field 'data' is not valid base64") from exc
    raise InvalidInput("field 'encoding' must be 'utf-8' or 'base64'")
