"""The controller's client of the in-VM agent: every call authenticated, bounded, translated."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from hearth.errors import (
    BackendError,
    Conflict,
    FileTooLarge,
    HearthError,
    InvalidArchive,
    InvalidInput,
    NotFound,
    PathConflict,
    PathNotFound,
    PathOutsideWorkspace,
    TooManyRunning,
)
from hearth.httpclient import async_client
from hearth_agent.wire import FILE_CHUNK_TIMEOUT_S


class AgentError(BackendError):
    """The agent answered with an error (its code and message are kept) or did not answer.

    The message names the VM, never the agent's address inside the VM network (clients read
    it: an API error, a VM's ``error``, an event); ``agent_url`` keeps that address for logs,
    ``agent_code`` the agent's own error code (None when it did not answer)."""

    code = "agent_error"
    http_status = 502

    def __init__(
        self, message: str, *, agent_url: str | None = None, agent_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.agent_url = agent_url
        self.agent_code = agent_code


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

# What the agent's refusals of a file request mean, by its code (its message is kept).
_FILE_ERRORS: dict[str, type[HearthError]] = {
    "path_outside_workspace": PathOutsideWorkspace,
    "invalid_archive": InvalidArchive,
    "path_not_found": PathNotFound,
    "path_conflict": PathConflict,
    "file_too_large": FileTooLarge,
    "body_too_large": FileTooLarge,
}
# A file transfer: how long one chunk may take either way (``FILE_CHUNK_TIMEOUT_S``, the agent's
# too), and the answer to an upload, which comes once the guest has synced the file to its disk.
FILE_WRITTEN_TIMEOUT_S = 600.0
FILE_TYPE_HEADER = "x-hearth-file-type"


@dataclass(frozen=True)
class AgentEvent:
    """One event of an agent's event stream: its id, its type and its JSON payload."""

    id: int
    type: str
    data: dict[str, Any]


class AgentClient:
    """Talks to one VM's agent with that VM's own token; its errors name the VM (``vm_id``)."""

    def __init__(
        self, url: str, token: str | None, *, timeout_s: float = 10.0, vm_id: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        # What errors call it: by its VM, never by its address inside the VM network.
        self.name = f"the agent of VM {vm_id}" if vm_id else "the VM's agent"
        self._token = token
        self._timeout = timeout_s

    def error(self, message: str, *, agent_code: str | None = None) -> AgentError:
        """An AgentError about this agent (``message`` names it by ``name``), its URL apart."""
        return AgentError(message, agent_url=self.url, agent_code=agent_code)

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
        errors: Mapping[str, type[HearthError]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """``headers``: sent as well (a ``Content-Type`` there wins over JSON's);
        ``client_request``: the body is a client's (an exec's), so the agent's refusals of it
        keep their meaning (422, 409, 429) instead of becoming a 502; ``errors``: what some of
        the agent's error codes mean, before that."""
        sent = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        if content is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        try:
            timeout = self._timeout if timeout_s is None else timeout_s
            async with async_client(timeout=timeout) as client:
                response = await client.request(
                    method, f"{self.url}{path}", content=content, json=json_body, headers=sent
                )
        except httpx.HTTPError as exc:
            raise self.error(
                f"{self.name} did not answer {method} {path}: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            self._raise_for(response, method, path, client_request=client_request, errors=errors)
        try:
            return response.json()
        except ValueError as exc:  # whatever answers in the VM (its root may replace the agent)
            raise self.error(
                f"{self.name} answered {method} {path} with a body that is not JSON"
            ) from exc

    def _raise_for(
        self,
        response: httpx.Response,
        method: str,
        path: str,
        *,
        client_request: bool = True,
        errors: Mapping[str, type[HearthError]] | None = None,
    ) -> None:
        """Raise the error an agent's error answer means (its code kept as ``agent_code``)."""
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "error", f"HTTP {response.status_code}"
        if errors is not None and code in errors:
            raise errors[code](message)
        if response.status_code == 404:
            raise NotFound(f"{self.name}: {message}")
        if client_request and response.status_code in _CLIENT_ERRORS:
            raise _CLIENT_ERRORS[response.status_code](message)
        raise self.error(f"{self.name} refused {method} {path}: {message}", agent_code=code)

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (no token needed)."""
        result: dict[str, Any] = await self._call("GET", "/health")
        return result

    async def version(self) -> dict[str, Any]:
        """``GET /version``: proves the token is accepted."""
        result: dict[str, Any] = await self._call("GET", "/version")
        return result

    async def set_clock(self, epoch: float) -> dict[str, Any]:
        """``POST /clock``: set the guest's clock to ``epoch``; whether it took, and the offset."""
        result: dict[str, Any] = await self._call("POST", "/clock", json_body={"time": epoch})
        return result

    async def mount_workspace(self, serial: str) -> dict[str, Any]:
        """``POST /workspace/volume``: mount the disk with ``serial`` as the workspace (formatted
        first when blank); where, and whether it was formatted."""
        result: dict[str, Any] = await self._call(
            "POST", "/workspace/volume", json_body={"serial": serial}, timeout_s=60.0
        )
        return result

    async def sync_workspace(self) -> dict[str, Any]:
        """``POST /workspace/volume/sync``: write what the guest caches to its disks."""
        result: dict[str, Any] = await self._call("POST", "/workspace/volume/sync")
        return result

    async def unmount_workspace(self) -> dict[str, Any]:
        """``DELETE /workspace/volume``: sync, and unmount the workspace volume if nothing
        holds it."""
        result: dict[str, Any] = await self._call("DELETE", "/workspace/volume")
        return result

    async def update_agent(
        self, bundle: bytes, *, headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """``POST /agent/update`` with a bundle and its headers (version, sha256, deadline); the
        agent's 202 answer, after which it restarts on the new build."""
        result: dict[str, Any] = await self._call(
            "POST",
            "/agent/update",
            content=bundle,
            headers={"Content-Type": "application/gzip", **headers},
            timeout_s=timeout_s,
        )
        return result

    async def credentials_facts(self, provider: str) -> dict[str, Any]:
        """``GET /credentials/{provider}``: present, sha256, bytes, mode, expires_at (no secret)."""
        result: dict[str, Any] = await self._call("GET", f"/credentials/{provider}")
        return result

    async def configure_refresh(self, *, proxy: str | None, margin_s: float) -> dict[str, Any]:
        """``PUT /credentials/oidc/refresh``: where the agent's oidc refresh goes out, and how
        long before expiry; the refresher's state."""
        body = {"proxy": proxy, "margin_s": margin_s}
        result: dict[str, Any] = await self._call(
            "PUT", "/credentials/oidc/refresh", json_body=body
        )
        return result

    async def refresh_state(self) -> dict[str, Any]:
        """``GET /credentials/oidc/refresh``: what the agent's oidc refresh last did (no token)."""
        result: dict[str, Any] = await self._call("GET", "/credentials/oidc/refresh")
        return result

    async def delete_credentials(self, provider: str) -> bool:
        """``DELETE /credentials/{provider}``; whether there was a document."""
        result = await self._call("DELETE", f"/credentials/{provider}")
        return bool(result.get("deleted"))

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
        content, document = result.get("content"), result.get("document")
        if isinstance(content, str):  # the file's own bytes (an agent of this version)
            return content.encode()
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

    async def login_status(
        self, login_id: str, *, content: bool = False, wait_s: float = 0.0
    ) -> dict[str, Any]:
        """``GET /login/{id}`` (with the captured document when ``content``); with ``wait_s``,
        a long poll the agent answers as soon as the login ends (``"waited": true`` says it
        did; an older agent answers at once, without it)."""
        query = []
        if content:
            query.append("content=true")
        if wait_s:
            query.append(f"wait={wait_s:g}")
        path = f"/login/{login_id}" + ("?" + "&".join(query) if query else "")
        result: dict[str, Any] = await self._call("GET", path, timeout_s=self._timeout + wait_s)
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

    async def exec_resize(self, exec_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec/{id}/resize {"cols", "rows"}``: the size of a command's terminal."""
        result: dict[str, Any] = await self._call(
            "POST", f"/exec/{exec_id}/resize", json_body=body, client_request=True
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
                    if not sse.data:
                        # The agent's keepalive (a comment, then a blank line), which httpx-sse
                        # hands out as an empty event once it has seen an id: no event.
                        continue
                    event = AgentEvent(id=int(sse.id), type=sse.event, data=sse.json())
                    yield event
                    if event.type == "exit":
                        return
        except (httpx.HTTPError, SSEError, ValueError) as exc:
            raise self.error(
                f"{self.name}: the event stream of exec {exec_id} broke off ({type(exc).__name__})"
            ) from exc
        raise self.error(f"{self.name}: the event stream of exec {exec_id} ended early")

    # ---- files -----------------------------------------------------------------------------

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return {**headers, **extra}

    async def files_write(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        archive: bool,
        max_bytes: int,
        mode: str | None = None,
    ) -> dict[str, Any]:
        """``PUT /files``: the file at ``path`` from ``chunks`` as they come (or, ``archive``,
        the tar they make extracted into the directory there); refused past ``max_bytes``."""
        params = {"path": path, "max_bytes": str(max_bytes), **({"mode": mode} if mode else {})}
        media = "application/x-tar" if archive else "application/octet-stream"
        timeout = httpx.Timeout(FILE_CHUNK_TIMEOUT_S, read=FILE_WRITTEN_TIMEOUT_S)
        try:
            async with async_client(timeout=timeout) as client:
                response = await client.put(
                    f"{self.url}/files",
                    params=params,
                    content=chunks,
                    headers=self._headers(**{"Content-Type": media}),
                )
        except httpx.HTTPError as exc:
            raise self.error(
                f"{self.name}: the upload to {path!r} broke off ({type(exc).__name__})"
            ) from exc
        if response.status_code >= 400:
            self._raise_for(response, "PUT", "/files", errors=_FILE_ERRORS)
        result: dict[str, Any] = response.json()
        return result

    async def files_read(self, path: str) -> AgentDownload:
        """``GET /files``: the file at ``path``, or the tar of the directory there, opened as a
        stream (close it: ``AgentDownload.aclose``)."""
        timeout = httpx.Timeout(FILE_CHUNK_TIMEOUT_S)
        opened = contextlib.AsyncExitStack()
        try:
            client = await opened.enter_async_context(async_client(timeout=timeout))
            request = client.build_request(
                "GET", f"{self.url}/files", params={"path": path}, headers=self._headers()
            )
            response = await client.send(request, stream=True)
            opened.push_async_callback(response.aclose)
            if response.status_code >= 400:
                await response.aread()
                self._raise_for(response, "GET", "/files", errors=_FILE_ERRORS)
        except httpx.HTTPError as exc:
            await opened.aclose()
            raise self.error(
                f"{self.name} did not answer GET /files: {type(exc).__name__}"
            ) from exc
        except BaseException:
            await opened.aclose()
            raise
        kind = response.headers.get(FILE_TYPE_HEADER, "file")
        length = response.headers.get("content-length")
        return AgentDownload(
            kind=kind,
            size=int(length) if kind == "file" and length is not None else None,
            content_type=response.headers.get("content-type", "application/octet-stream"),
            agent=self,
            _response=response,
            _opened=opened,
        )

    async def files_list(self, path: str) -> dict[str, Any]:
        """``GET /files/list``: the entries of the directory at ``path``."""
        query = httpx.QueryParams({"path": path})
        result: dict[str, Any] = await self._call(
            "GET", f"/files/list?{query}", client_request=True, errors=_FILE_ERRORS
        )
        return result

    async def files_remove(self, path: str, *, recursive: bool) -> dict[str, Any]:
        """``DELETE /files``: the file, symlink or (``recursive``) directory at ``path``."""
        query = httpx.QueryParams({"path": path, "recursive": "true" if recursive else "false"})
        result: dict[str, Any] = await self._call(
            "DELETE", f"/files?{query}", client_request=True, errors=_FILE_ERRORS
        )
        return result


@dataclass
class AgentDownload:
    """A file (``kind`` ``file``, ``size`` bytes) or a directory's tar (``dir``) streaming from
    an agent; its bytes come from ``chunks()``, and ``aclose()`` lets the connection go."""

    kind: str
    size: int | None
    content_type: str
    agent: AgentClient
    _response: httpx.Response
    _opened: contextlib.AsyncExitStack

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes as they arrive; AgentError if the stream breaks off before its end."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise self.agent.error(
                f"{self.agent.name}: the download broke off ({type(exc).__name__})"
            ) from exc

    async def aclose(self) -> None:
        """Close the response and its client; idempotent."""
        await self._opened.aclose()


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of ``data`` (what the agent reports for a written document)."""
    return hashlib.sha256(data).hexdigest()
