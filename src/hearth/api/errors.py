"""The one place errors become HTTP: HearthError, validation, routing and anything unexpected."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hearth.errors import HearthError
from hearth.logging import get_logger

_log = get_logger("api")

# The methods a 405's Allow header may name.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}

# What a close frame's reason may hold (125 bytes of payload, 2 of them the code).
WEBSOCKET_REASON_BYTES = 123


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message}}


def _field(loc: tuple[Any, ...]) -> str:
    # The first item says where (body, query, path); a query parameter may itself be "path".
    if loc and loc[0] in ("body", "query", "path"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or "body"


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """Status, code and a message naming every offending field."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed_json", "the request body is not valid JSON"
    parts = []
    for error in errors[:10]:
        if error.get("type") == "extra_forbidden":
            parts.append(f"{_field(tuple(error['loc']))}: unknown field")
        else:
            parts.append(f"{_field(tuple(error['loc']))}: {error.get('msg', 'invalid')}")
    return 422, "invalid_input", "; ".join(parts)


def hearth_error_response(exc: HearthError) -> JSONResponse:
    """The HTTP response for a HearthError: its status, its code and message, and the headers
    its status calls for. Route handlers and the key guard (which answers before any route)
    both answer through here."""
    if exc.http_status >= 500:
        _log.warning("request_failed", code=exc.code, error=exc.message[:500])
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    if exc.http_status == 413:
        # The body was not read; the connection cannot carry another request.
        headers = {"Connection": "close"}
    return JSONResponse(
        error_body(exc.code, exc.message), status_code=exc.http_status, headers=headers
    )


def websocket_close(exc: HearthError) -> tuple[int, str]:
    """How a WebSocket ends on a HearthError: close code 4000 + the HTTP status the same
    refusal has (4401, 4404, 4409, …), and the message cut to what a close frame carries."""
    if exc.http_status >= 500:
        _log.warning("websocket_failed", code=exc.code, error=exc.message[:500])
    reason = exc.message.encode()[:WEBSOCKET_REASON_BYTES].decode(errors="ignore")
    return 4000 + exc.http_status, reason


def _methods_on(request: Request) -> list[str]:
    """Every method some route serves on the request's path: asked of the routes as routing
    does (``matches``), since FastAPI keeps included routers nested, out of a flat listing."""
    served = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            served.append(method)
    return served


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; every error leaves in the one JSON shape."""

    @app.exception_handler(HearthError)
    async def hearth_error(request: Request, exc: HearthError) -> JSONResponse:
        return hearth_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = validation_message(exc)
        return JSONResponse(error_body(code, message), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; a path served by
            # several routes (GET and POST /api/vms) must list them all.
            headers["Allow"] = ", ".join(_methods_on(request)) or headers.get("Allow", "")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        _log.error(
            "unhandled_error", request_id=request_id, error_type=type(exc).__name__, exc_info=exc
        )
        return JSONResponse(
            error_body("internal", f"internal error; request id {request_id}"), status_code=500
        )
