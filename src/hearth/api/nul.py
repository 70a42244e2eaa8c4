"""No NUL character gets in: not in a request's path or query, not in a body's text.

PostgreSQL's text cannot hold NUL (its driver raises, which would answer 500), a program's
argv and environment cannot either, and no id the controller hands out contains one. So a NUL
where a client can put one is refused at the boundary, as 422 ``invalid_input``: in the path or
query by ``RefuseNul`` (before any route looks a resource up), in a JSON body by
``RequestModel``, the base of every request body. The one kind of text allowed to carry a NUL
is bytes for a command's stdin, which nothing stores (``RequestModel.BINARY_TEXT``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.api.errors import hearth_error_response, websocket_close
from hearth.errors import InvalidInput

NUL = "\x00"
NUL_MESSAGE = "must not hold a NUL character (\\u0000)"
# Routes that read nothing from the request: a query there is ignored, as on every route an
# undeclared parameter is, so a NUL in it is too (and they document no 422).
NO_INPUT_PATHS = frozenset({"/health", "/metrics"})


def holds_nul(value: Any) -> bool:
    """Whether a NUL is in ``value``: a string, or any string inside its lists, dicts or
    models."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, list | tuple | set | frozenset):
        return any(holds_nul(item) for item in value)
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, BaseModel):
        return any(holds_nul(getattr(value, name)) for name in type(value).model_fields)
    return False


class RefuseNul:
    """Refuses a request (HTTP or WebSocket) whose decoded path or query holds a NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = _nul_in(scope) if scope["type"] in ("http", "websocket") else None
        if where is None:
            await self.app(scope, receive, send)
            return
        refusal = InvalidInput(f"the request's {where} {NUL_MESSAGE}")
        if scope["type"] == "websocket":
            code, reason = websocket_close(refusal)
            await send({"type": "websocket.close", "code": code, "reason": reason})
            return
        await hearth_error_response(refusal)(scope, receive, send)


def _nul_in(scope: Scope) -> str | None:
    # The server has decoded the path; the query is raw bytes, where a NUL can only be %00.
    if NUL in scope["path"]:
        return "path"
    if scope["path"] not in NO_INPUT_PATHS and b"%00" in scope.get("query_string", b""):
        return "query"
    return None


class NulFree(BaseModel):
    """Mixed into the base of request bodies: every field's text is checked for NUL, but the
    fields a class names in ``BINARY_TEXT``."""

    BINARY_TEXT: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name not in cls.BINARY_TEXT and holds_nul(value):
            raise PydanticCustomError("nul_character", NUL_MESSAGE)
        return value
