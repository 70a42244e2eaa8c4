"""The controller's client of the in-VM agent: every call authenticated, bounded, translated."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from hearth.errors import (
    BackendError,
    Conflict,
    HearthError,
    InvalidInput,
    NotFound,
    TooManyRunning,
)
from hearth.httpclient import async_client


class AgentError(BackendError):
    """The agent answered with an error (its code and message are kept) or did not answer."""

    code = "agent_error"
    http_status = 502


# Longer than the agent's own limits (180 s to start a vendor login, 120 s for a status command).
LOGIN_START_TIMEOUT_S = 240.0
CLI_STATUS_TIMEOUT_S = 150.0
# Starting a process in a busy guest under emulation (ten at once, say) can take seconds.
EXEC_START_TIMEOUT_S = 60.0
# An event stream is idle for at most the agent's keep-alive interval (15 s) between lines.
EVENT_STREAM_READ_TIMEOUT_S = 60.0
# What an agent's refusal of a client's own request (an exec's body, its stdin) becomes.
_CLIENT_ERRORS: dict[int, type[HearthError]] = {
    400: InvalidInput,
    409: Conflict,
    422: InvalidInput,
    429: TooManyRunning,
}


@dataclass(frozen=True)
class AgentEvent:
    """One event of an agent's event stream: its id, its type and its JSON payload."""

    id: int
    type: str
    data: dict[str, Any]


class AgentClient:
    """Talks to one VM's agent with that VM's own token."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout_s

    def __repr__(self) -> str:
        return f"AgentClient({self.url!r})"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        json_body: Any = None,
        timeout_s: float | None = None,
        client_request: bool = False,
    ) -> Any:
        """``client_request``: the body is a client's (an exec's), so the agent's refusals of it
        keep their meaning (422, 409, 429) instead of becoming a 502."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            timeout = self._timeout if timeout_s is None else timeout_s
            async with async_client(timeout=timeout) as client:
                response = await client.request(
                    method, f"{self.url}{path}", content=content, json=json_body, headers=headers
                )
        except httpx.HTTPError as exc:
            raise AgentError(
                f"agent at {self.url} did not answer {method} {path}: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            self._raise_for(response, method, path, client_request=client_request)
        return response.json()

    def _raise_for(
        self, response: httpx.Response, method: str, path: str, *, client_request: bool = True
    ) -> None:
        """Raise the error an agent's error answer means (its code kept as ``agent_code``)."""
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "error", f"HTTP {response.status_code}"
        if response.status_code == 404:
            raise NotFound(f"agent at {self.url}: {message}")
        if client_request and response.status_code in _CLIENT_ERRORS:
            raise _CLIENT_ERRORS[response.status_code](message)
        failure = AgentError(f"agent at {self.url} refused {method} {path}: {message}")
        failure.agent_code = code  # type: ignore[attr-defined]
        raise failure

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (no token needed)."""
        result: dict[str, Any] = await self._call("GET", "/health")
        return result

    async def version(self) -> dict[str, Any]:
        """``GET /version``: proves the token is accepted."""
        result: dict[str, Any] = await self._call("GET", "/version")
        return result

    async def put_credentials(self, provider: str, document: bytes) -> str:
        """Write a credential document; returns the sha256 the agent computed."""
        result = await self._call("PUT", f"/credentials/{provider}", content=document)
        return str(result["sha256"])

    async def credentials_document(self, provider: str) -> bytes | None:
        """The current document of a provider (to pull back rotated tokens); None if absent."""
        try:
            result = await self._call("GET", f"/credentials/{provider}?content=true")
        except NotFound:
            return None
        document = result.get("document")
        if document is None:
            return None
        return json.dumps(document, indent=2).encode() + b"\n"

    async def login_start(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /login/start`` on a Browser VM's agent.

        It answers once the login URL is known: a vendor CLI may take minutes to print it under
        emulation (the agent gives up after 180 s), so this call waits longer than the others.
        """
        result: dict[str, Any] = await self._call(
            "POST", "/login/start", json_body=body, timeout_s=LOGIN_START_TIMEOUT_S
        )
        return result

    async def cli_status(self, provider: str) -> dict[str, Any]:
        """``GET /credentials/{provider}/status``: what the provider's own CLI says, offline."""
        result: dict[str, Any] = await self._call(
            "GET", f"/credentials/{provider}/status", timeout_s=CLI_STATUS_TIMEOUT_S
        )
        return result

    async def login_status(self, login_id: str, *, content: bool = False) -> dict[str, Any]:
        """``GET /login/{id}`` (with the captured document when ``content``)."""
        suffix = "?content=true" if content else ""
        result: dict[str, Any] = await self._call("GET", f"/login/{login_id}{suffix}")
        return result

    async def login_cancel(self, login_id: str) -> None:
        """``DELETE /login/{id}``; a login that is already gone is fine."""
        with contextlib.suppress(HearthError):
            await self._call("DELETE", f"/login/{login_id}")

    # ---- commands (exec) -----------------------------------------------------------------

    async def exec_start(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec``: ``{"exec_id", "pid"}`` of the command started in its own group."""
        result: dict[str, Any] = await self._call(
            "POST", "/exec", json_body=body, timeout_s=EXEC_START_TIMEOUT_S, client_request=True
        )
        return result

    async def exec_status(self, exec_id: str) -> dict[str, Any]:
        """``GET /exec/{id}``: running or exited, and how."""
        result: dict[str, Any] = await self._call("GET", f"/exec/{exec_id}", client_request=True)
        return result

    async def exec_stdin(self, exec_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec/{id}/stdin``."""
        result: dict[str, Any] = await self._call(
            "POST", f"/exec/{exec_id}/stdin", json_body=body, client_request=True
        )
        return result

    async def exec_kill(self, exec_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec/{id}/kill``: a signal to the command's whole process group."""
        result: dict[str, Any] = await self._call(
            "POST", f"/exec/{exec_id}/kill", json_body=body, client_request=True
        )
        return result

    async def exec_events(self, exec_id: str, *, after: int = 0) -> AsyncIterator[AgentEvent]:
        """The command's events after id ``after``, as they happen, until its ``exit``.

        Reading acknowledges them to the agent (which then frees them); a caller that stops
        early resumes with the last id it saw.
        """
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        path = f"/exec/{exec_id}/events?after={after}"
        timeout = httpx.Timeout(self._timeout, read=EVENT_STREAM_READ_TIMEOUT_S)
        try:
            async with (
                async_client(timeout=timeout) as client,
                aconnect_sse(client, "GET", f"{self.url}{path}", headers=headers) as source,
            ):
                if source.response.status_code >= 400:
                    await source.response.aread()
                    self._raise_for(source.response, "GET", path)
                async for sse in source.aiter_sse():
                    event = AgentEvent(id=int(sse.id), type=sse.event, data=sse.json())
                    yield event
                    if event.type == "exit":
                        return
        except (httpx.HTTPError, SSEError, ValueError) as exc:
            raise AgentError(
                f"agent at {self.url}: the event stream of exec {exec_id} broke off "
                f"({type(exc).__name__})"
            ) from exc
        raise AgentError(f"agent at {self.url}: the event stream of exec {exec_id} ended early")


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of ``data`` (what the agent reports for a written document)."""
    return hashlib.sha256(data).hexdigest()
