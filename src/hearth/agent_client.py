"""The controller's client of the in-VM agent: every call authenticated, bounded, translated."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from hearth import agent_answers as answers
from hearth.agent_credentials import checked_facts, document_bytes, written_sha256
from hearth.agent_download import AgentDownload
from hearth.capped_reads import ResponseTooLarge, capped_events, read_capped
from hearth.errors import BackendError, HearthError, NotFound
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
# Writing out what a guest caches (hundreds of MB after a clone, through LUKS, under emulation)
# before its VM is destroyed or hibernated: as long as the agent gives its own disk tools.
SYNC_TIMEOUT_S = 120.0
# An event stream is idle for at most the agent's keep-alive interval (15 s) between lines.
EVENT_STREAM_READ_TIMEOUT_S = 60.0
_MIB = 1024 * 1024
# The most an agent's answer may hold: whatever answers in a VM is its root's, and may not end.
# A JSON answer (or an error) of the agent's is a few KiB...
MAX_ANSWER_BYTES = 4 * _MIB
# ...but one with a credential document (at most 1 MiB, the agent's body limit) holds it twice,
# parsed and as its text, each at most 3x its bytes once in JSON: 6 MiB.
MAX_DOCUMENT_ANSWER_BYTES = 8 * _MIB
# One event of an exec's event stream: up to 64 KiB of output (6x once in JSON): 384 KiB.
MAX_EVENT_BYTES = _MIB

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
        max_bytes: int = MAX_ANSWER_BYTES,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> dict[str, Any]:
        """``headers``: sent as well (a ``Content-Type`` there wins over JSON's);
        ``client_request``: the body is a client's (an exec's), so the agent's refusals of it
        keep their meaning (422, 409, 429) instead of becoming a 502; ``errors``: what some of
        the agent's error codes mean, before that; ``max_bytes``: the most the answer may hold;
        ``decode``: how a 2xx answer is parsed. The whole call, answer and all, takes at most
        ``timeout_s``."""
        sent = self._headers()
        if content is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        timeout = self._timeout if timeout_s is None else timeout_s
        try:
            # httpx's timeout bounds each read, not the whole: an answer that trickles in
            # forever would hold the call.
            async with (
                asyncio.timeout(timeout),
                async_client(timeout=timeout) as client,
                client.stream(
                    method, f"{self.url}{path}", content=content, json=json_body, headers=sent
                ) as response,
            ):
                return await self._answer(
                    response,
                    method,
                    path,
                    max_bytes,
                    client_request=client_request,
                    errors=errors,
                    decode=decode,
                )
        except TimeoutError as exc:
            raise self.error(
                f"{self.name} did not answer {method} {path} within {timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise self.error(
                f"{self.name} did not answer {method} {path}: {type(exc).__name__}"
            ) from exc

    def _headers(self, **extra: str) -> dict[str, str]:
        # Answers are read raw (``read_capped``): none may come compressed.
        headers = {"Accept-Encoding": "identity"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return {**headers, **extra}

    async def _answer(
        self,
        response: httpx.Response,
        method: str,
        path: str,
        max_bytes: int = MAX_ANSWER_BYTES,
        *,
        client_request: bool = True,
        errors: Mapping[str, type[HearthError]] | None = None,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> dict[str, Any]:
        """The JSON object of a streamed answer (a 2xx one parsed by ``decode``), read whole
        unless past ``max_bytes`` (AgentError), or the error an error answer means (its code kept
        as ``agent_code``, its message cut: ``guest_text``)."""
        if response.status_code >= 400:  # an error: a code and a message
            max_bytes = min(max_bytes, MAX_ANSWER_BYTES)
        try:
            body = await read_capped(response, max_bytes)
        except ResponseTooLarge as exc:
            raise self.error(
                f"{self.name} answered {method} {path} with more than {max_bytes} bytes"
            ) from exc
        try:
            answer = decode(body) if response.status_code < 400 else json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested past what Python decodes
            answer = None
        if response.status_code < 400:
            if not isinstance(answer, dict):  # whatever answers in the VM (its root's choice)
                raise self.error(
                    f"{self.name} answered {method} {path} with a body that is not a JSON object"
                )
            return answer
        try:
            code = answers.guest_text(answer["error"]["code"], 100)
            message = answers.guest_text(answer["error"]["message"])
        except (KeyError, TypeError):
            code, message = "error", f"HTTP {response.status_code}"
        if errors is not None and code in errors:
            raise errors[code](message)
        if response.status_code == 404:
            raise NotFound(f"{self.name}: {message}")
        if client_request and response.status_code in answers.CLIENT_ERRORS:
            raise answers.CLIENT_ERRORS[response.status_code](message)
        raise self.error(f"{self.name} refused {method} {path}: {message}", agent_code=code)

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (no token needed)."""
        return await self._call("GET", "/health")

    async def version(self) -> dict[str, Any]:
        """``GET /version``: proves the token is accepted."""
        return await self._call("GET", "/version")

    async def set_clock(self, epoch: float) -> dict[str, Any]:
        """``POST /clock``: set the guest's clock to ``epoch``; whether it took, and the offset."""
        return await self._call("POST", "/clock", json_body={"time": epoch})

    async def mount_workspace(self, serial: str) -> dict[str, Any]:
        """``POST /workspace/volume``: mount the disk with ``serial`` as the workspace (formatted
        first when blank); where, and whether it was formatted."""
        return await self._call(
            "POST", "/workspace/volume", json_body={"serial": serial}, timeout_s=60.0
        )

    async def sync_workspace(self) -> dict[str, Any]:
        """``POST /workspace/volume/sync``: write what the guest caches to its disks."""
        return await self._call("POST", "/workspace/volume/sync", timeout_s=SYNC_TIMEOUT_S)

    async def unmount_workspace(self) -> dict[str, Any]:
        """``DELETE /workspace/volume``: sync, and unmount the workspace volume if nothing
        holds it."""
        return await self._call("DELETE", "/workspace/volume", timeout_s=SYNC_TIMEOUT_S)

    async def update_agent(
        self, bundle: bytes, *, headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """``POST /agent/update`` with a bundle and its headers (version, sha256, deadline); the
        agent's 202 answer, after which it restarts on the new build."""
        return await self._call(
            "POST",
            "/agent/update",
            content=bundle,
            headers={"Content-Type": "application/gzip", **headers},
            timeout_s=timeout_s,
        )

    async def credentials_facts(self, provider: str) -> dict[str, Any]:
        """``GET /credentials/{provider}``: present, sha256, bytes, mode, expires_at (no secret),
        checked (``hearth.agent_credentials``)."""
        return checked_facts(self, provider, await self._call("GET", f"/credentials/{provider}"))

    async def configure_refresh(self, *, proxy: str | None, margin_s: float) -> dict[str, Any]:
        """``PUT /credentials/oidc/refresh``: where the agent's oidc refresh goes out, and how
        long before expiry; the refresher's state."""
        body = {"proxy": proxy, "margin_s": margin_s}
        return await self._call("PUT", "/credentials/oidc/refresh", json_body=body)

    async def refresh_state(self) -> dict[str, Any]:
        """``GET /credentials/oidc/refresh``: what the agent's oidc refresh last did (no token)."""
        return await self._call("GET", "/credentials/oidc/refresh")

    async def delete_credentials(self, provider: str) -> bool:
        """``DELETE /credentials/{provider}``; whether there was a document."""
        result = await self._call("DELETE", f"/credentials/{provider}")
        return bool(result.get("deleted"))

    async def put_credentials(self, provider: str, document: bytes) -> str:
        """Write a credential document; returns the sha256 the agent computed."""
        result = await self._call("PUT", f"/credentials/{provider}", content=document)
        return written_sha256(self, provider, result)

    async def credentials_document(self, provider: str) -> bytes | None:
        """The current document of a provider (to pull back rotated tokens); None if absent,
        AgentError for an answer that holds none that can be kept."""
        try:
            result = await self._call(
                "GET", f"/credentials/{provider}?content=true", max_bytes=MAX_DOCUMENT_ANSWER_BYTES
            )
        except NotFound:
            return None
        return document_bytes(self, provider, result)

    async def login_start(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /login/start`` on a Browser VM's agent.

        It answers once the login URL is known: a vendor CLI may take minutes to print it under
        emulation (the agent gives up after 180 s), so this call waits longer than the others.
        """
        return await self._call(
            "POST", "/login/start", json_body=body, timeout_s=LOGIN_START_TIMEOUT_S
        )

    async def cli_status(self, provider: str) -> dict[str, Any]:
        """``GET /credentials/{provider}/status``: what the provider's own CLI says, offline."""
        return await self._call(
            "GET", f"/credentials/{provider}/status", timeout_s=CLI_STATUS_TIMEOUT_S
        )

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
        return await self._call(
            "GET",
            path,
            timeout_s=self._timeout + wait_s,
            max_bytes=MAX_DOCUMENT_ANSWER_BYTES if content else MAX_ANSWER_BYTES,
        )

    async def login_cancel(self, login_id: str) -> None:
        """``DELETE /login/{id}``; a login that is already gone is fine."""
        with contextlib.suppress(HearthError):
            await self._call("DELETE", f"/login/{login_id}")

    # ---- commands (exec) -----------------------------------------------------------------

    async def _checked(
        self, shape: answers.Shape, method: str, path: str, **call: Any
    ) -> dict[str, Any]:
        """``_call``, its answer checked and kept as ``shape`` says (``hearth.agent_answers``)."""
        answer = await self._call(method, path, **call)
        return answers.checked(self, f"{method} {path.split('?')[0]}", shape, answer)

    async def _exec_call(
        self, shape: answers.Shape, method: str, exec_id: str, action: str = "", **call: Any
    ) -> dict[str, Any]:
        """``_checked`` of a call about exec ``exec_id``, answered about that exec."""
        path = f"/exec/{exec_id}{action}"
        answer = await self._checked(shape, method, path, client_request=True, **call)
        return answers.same_exec(self, f"{method} {path}", exec_id, answer)

    async def exec_start(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec``: ``{"exec_id", "pid"}`` of the command started in its own group."""
        return await self._checked(
            answers.EXEC_STARTED,
            "POST",
            "/exec",
            json_body=body,
            timeout_s=EXEC_START_TIMEOUT_S,
            client_request=True,
        )

    async def exec_status(self, exec_id: str) -> dict[str, Any]:
        """``GET /exec/{id}``: running or exited, and how."""
        return await self._exec_call(answers.EXEC_STATE, "GET", exec_id)

    async def exec_stdin(self, exec_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec/{id}/stdin``: how many bytes wait for the command to read them."""
        shape = answers.EXEC_STDIN_QUEUED
        return await self._exec_call(shape, "POST", exec_id, "/stdin", json_body=body)

    async def exec_kill(self, exec_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec/{id}/kill``: a signal to the command's whole process group."""
        shape = answers.EXEC_SIGNALLED
        return await self._exec_call(shape, "POST", exec_id, "/kill", json_body=body)

    async def exec_resize(self, exec_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /exec/{id}/resize {"cols", "rows"}``: the size of a command's terminal."""
        shape = answers.EXEC_RESIZED
        return await self._exec_call(shape, "POST", exec_id, "/resize", json_body=body)

    async def exec_events(self, exec_id: str, *, after: int = 0) -> AsyncIterator[AgentEvent]:
        """The command's events after id ``after``, as they happen, until its ``exit``.

        Reading acknowledges them to the agent (which then frees them); a caller that stops
        early resumes with the last id it saw.
        """
        path = f"/exec/{exec_id}/events?after={after}"
        timeout = httpx.Timeout(self._timeout, read=EVENT_STREAM_READ_TIMEOUT_S)
        sent = self._headers(Accept="text/event-stream")
        try:
            async with (
                async_client(timeout=timeout) as client,
                client.stream("GET", f"{self.url}{path}", headers=sent) as response,
            ):
                if response.status_code >= 400:
                    async with asyncio.timeout(self._timeout):
                        await self._answer(response, "GET", path)
                async for sse in capped_events(response, MAX_EVENT_BYTES):
                    data = sse.json()
                    if not isinstance(data, dict):
                        raise self.error(
                            f"{self.name}: the event stream of exec {exec_id} sent an event "
                            "that is not a JSON object"
                        )
                    event = AgentEvent(id=int(sse.id), type=sse.event, data=data)
                    yield event
                    if event.type == "exit":
                        return
        except ResponseTooLarge as exc:
            raise self.error(
                f"{self.name}: the event stream of exec {exec_id} sent an event of more than "
                f"{exc.limit} bytes"
            ) from exc
        except (httpx.HTTPError, TimeoutError, ValueError, RecursionError) as exc:
            raise self.error(
                f"{self.name}: the event stream of exec {exec_id} broke off ({type(exc).__name__})"
            ) from exc
        raise self.error(f"{self.name}: the event stream of exec {exec_id} ended early")

    # ---- files -----------------------------------------------------------------------------

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
        sent = self._headers(**{"Content-Type": media})
        try:
            async with (
                async_client(timeout=timeout) as client,
                client.stream(
                    "PUT", f"{self.url}/files", params=params, content=chunks, headers=sent
                ) as response,
            ):
                async with asyncio.timeout(self._timeout):  # once it has begun to answer
                    written = await self._answer(
                        response, "PUT", "/files", errors=answers.FILE_ERRORS
                    )
                    return answers.checked(self, "PUT /files", answers.FILE_WRITTEN, written)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise self.error(
                f"{self.name}: the upload to {path!r} broke off ({type(exc).__name__})"
            ) from exc

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
                async with asyncio.timeout(self._timeout):
                    await self._answer(response, "GET", "/files", errors=answers.FILE_ERRORS)
            kind = answers.file_kind(self, response.headers.get(FILE_TYPE_HEADER, "file"))
        except (httpx.HTTPError, TimeoutError) as exc:
            await opened.aclose()
            raise self.error(
                f"{self.name} did not answer GET /files: {type(exc).__name__}"
            ) from exc
        except BaseException:
            await opened.aclose()
            raise
        length = response.headers.get("content-length")
        return AgentDownload(
            kind=kind,
            size=int(length) if kind == "file" and length is not None else None,
            content_type=response.headers.get("content-type", "application/octet-stream"),
            agent=self,
            _response=response,
            _opened=opened,
        )

    async def _file_call(
        self, shape: answers.Shape, method: str, route: str, query: dict[str, str], **call: Any
    ) -> dict[str, Any]:
        """``_checked`` of a file request (its refusals meaning what ``FILE_ERRORS`` says)."""
        path = f"{route}?{httpx.QueryParams(query)}"
        errors = answers.FILE_ERRORS
        return await self._checked(shape, method, path, client_request=True, errors=errors, **call)

    async def files_list(self, path: str) -> dict[str, Any]:
        """``GET /files/list``: the entries of the directory at ``path``."""
        # Its tokens are counted before it is parsed (``listing_json``).
        listing, decode = answers.FILE_LISTING, functools.partial(answers.listing_json, self)
        query, most = {"path": path}, answers.MAX_LISTING_BYTES
        return await self._file_call(
            listing, "GET", "/files/list", query, decode=decode, max_bytes=most
        )

    async def files_remove(self, path: str, *, recursive: bool) -> dict[str, Any]:
        """``DELETE /files``: the file, symlink or (``recursive``) directory at ``path``."""
        query = {"path": path, "recursive": "true" if recursive else "false"}
        return await self._file_call(answers.FILE_REMOVED, "DELETE", "/files", query)


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of ``data`` (what the agent reports for a written document)."""
    return hashlib.sha256(data).hexdigest()
