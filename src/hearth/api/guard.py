"""The key guard: a request's API key is checked, and its body bounded, before a byte is read.

FastAPI reads and parses a JSON body before it resolves a route's dependencies, so a key
checked as a dependency comes too late: a 50 MB body without a key would be read and parsed,
blocking the event loop, before the 401. This plain ASGI middleware answers first. It hands
the authenticated key on in the request's state, where ``hearth.api.auth.api_key`` takes it.
Uploads (``PUT`` on the ``uploads`` path: the files API) are bounded by their own, larger cap
and never buffered here: a declared length over it is refused unread, and a chunked body goes
on to the route, which streams it and holds it to the cap itself.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.api.auth import API_KEY_STATE, authenticate
from hearth.api.context import Controller
from hearth.api.errors import hearth_error_response
from hearth.api.headers import decimal
from hearth.errors import BodyTooLarge, FileTooLarge, HearthError

# Open without a key: the health probe, the API's own description, the login view and the
# terminal page, which their links' tokens gate instead, and their static files (none of them
# takes a body).
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
PUBLIC_PREFIXES = ("/view/", "/novnc/", "/terminal/", "/static/terminal/", "/xterm/")


def is_public(path: str) -> bool:
    """Whether ``path`` is served without an API key."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class KeyGuard:
    """Refuses a request without a valid key (401) or with a body over the limit (413), unread."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        uploads: re.Pattern[str] | None = None,
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.uploads = uploads
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        ctl: Controller = scope["app"].state.controller
        headers = Headers(scope=scope)
        try:
            record = await authenticate(ctl.store, headers.get("authorization", ""))
            if self._is_upload(scope):
                self._check_upload(headers)
            else:
                receive = await self._bounded(headers, receive)
        except HearthError as exc:
            await hearth_error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[API_KEY_STATE] = record
        await self.app(scope, receive, send)

    def _is_upload(self, scope: Scope) -> bool:
        return (
            self.uploads is not None
            and scope["method"] == "PUT"
            and self.uploads.fullmatch(scope["path"]) is not None
        )

    def _check_upload(self, headers: Headers) -> None:
        declared = decimal(headers.get("content-length"))
        if declared is not None and declared > self.max_upload_bytes:
            raise FileTooLarge(
                f"a body of {declared} bytes exceeds the limit of {self.max_upload_bytes} "
                "bytes (HEARTH_FILES_MAX_BYTES)"
            )

    async def _bounded(self, headers: Headers, receive: Receive) -> Receive:
        """``receive`` for a body within the limit; BodyTooLarge (nothing kept) for one over it.

        A declared length is checked without reading (the server holds the client to it). A
        body without one (chunked) is read here, up to the limit, and replayed to the app.
        """
        if headers.get("content-length") is not None:
            declared = decimal(headers.get("content-length"))
            if declared is not None and declared > self.max_body_bytes:
                raise self._too_large(f"a body of {declared} bytes")
            return receive
        if headers.get("transfer-encoding") is None:
            return receive  # no body at all
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise self._too_large("the body")
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return replay

    def _too_large(self, what: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"{what} exceeds the limit of {self.max_body_bytes} bytes (HEARTH_MAX_BODY_BYTES)"
        )
