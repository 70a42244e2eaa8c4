"""The controller's client of the in-VM agent: every call authenticated, bounded, translated."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import httpx

from hearth.errors import BackendError, HearthError, NotFound
from hearth.httpclient import async_client


class AgentError(BackendError):
    """The agent answered with an error (its code and message are kept) or did not answer."""

    code = "agent_error"
    http_status = 502


# Longer than the agent's own limits (180 s to start a vendor login, 120 s for a status command).
LOGIN_START_TIMEOUT_S = 240.0
CLI_STATUS_TIMEOUT_S = 150.0


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
    ) -> Any:
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
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "error", f"HTTP {response.status_code}"
            if response.status_code == 404:
                raise NotFound(f"agent at {self.url}: {message}")
            failure = AgentError(f"agent at {self.url} refused {method} {path}: {message}")
            failure.agent_code = code  # type: ignore[attr-defined]
            raise failure
        return response.json()

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


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of ``data`` (what the agent reports for a written document)."""
    return hashlib.sha256(data).hexdigest()
