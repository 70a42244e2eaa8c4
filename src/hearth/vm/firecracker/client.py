"""FirecrackerClient: the Firecracker API over its unix socket, one small resource per REST path.

Every request has a timeout. Failures are translated here, at the one boundary with the VMM:
a non-2xx answer becomes ``BackendError("firecracker METHOD PATH: <fault_message>")`` and a
transport failure (socket missing, refused, timed out) becomes BackendError raised from the httpx
error. Resources marked secret (``/mmds``) never have their body quoted back in an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from hearth.closing import Closing
from hearth.errors import BackendError
from hearth.vm.firecracker.payloads import check_id

DEFAULT_TIMEOUT_S = 5.0
# sun_path holds 108 bytes including the terminating NUL.
_MAX_UDS_PATH = 107
_REDACTED = "[redacted]"


def reachable_socket_path(path: Path) -> tuple[str, int | None]:
    """A path ``connect()`` accepts for ``path``, and a directory fd to close later (or None).

    State directories can be deep enough to exceed the AF_UNIX path limit; such sockets are
    reached through ``/proc/self/fd/<dirfd>/<name>``, which the kernel resolves without the limit.
    """
    if len(os.fsencode(path)) <= _MAX_UDS_PATH:
        return str(path), None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


class Resource:
    """One REST path of the API with get/put/patch; ``id_field`` appends the body's id to it."""

    def __init__(
        self,
        client: FirecrackerClient,
        path: str,
        *,
        id_field: str | None = None,
        secret: bool = False,
    ) -> None:
        self._client = client
        self.path = path
        self.id_field = id_field
        self.secret = secret

    def path_for(self, body: Mapping[str, Any] | None) -> str:
        """The request path: ``/drives/rootfs`` for a body whose ``drive_id`` is ``rootfs``."""
        if self.id_field is None:
            return self.path
        if body is None or not isinstance(body.get(self.id_field), str):
            raise BackendError(f"firecracker {self.path}: the body has no {self.id_field}")
        return f"{self.path}/{check_id(body[self.id_field], what=self.id_field)}"

    async def get(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """GET the resource and return its JSON object."""
        response = await self._client.request("GET", self.path, timeout_s=timeout_s)
        try:
            data = response.json()
        except ValueError as exc:
            raise BackendError(f"firecracker GET {self.path}: the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise BackendError(f"firecracker GET {self.path}: the answer is not a JSON object")
        return data

    async def put(self, body: Mapping[str, Any], *, timeout_s: float | None = None) -> None:
        """PUT ``body`` (create or replace)."""
        await self._client.request(
            "PUT", self.path_for(body), body=body, timeout_s=timeout_s, secret=self.secret
        )

    async def patch(self, body: Mapping[str, Any], *, timeout_s: float | None = None) -> None:
        """PATCH ``body`` (partial update)."""
        await self._client.request(
            "PATCH", self.path_for(body), body=body, timeout_s=timeout_s, secret=self.secret
        )


class FirecrackerClient(Closing):
    """Async client of one Firecracker process's API; ``transport`` may be injected for tests."""

    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._dir_fd: int | None = None
        if transport is None:
            if socket_path is None:
                raise BackendError("firecracker client needs a socket path or a transport")
            try:
                uds, self._dir_fd = reachable_socket_path(socket_path)
            except OSError as exc:
                raise BackendError(f"firecracker API socket {socket_path}: {exc.strerror}") from exc
            transport = httpx.AsyncHTTPTransport(uds=uds)
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            transport=transport, base_url="http://localhost", timeout=timeout_s
        )
        # The table of resources, named after their REST paths.
        self.instance = Resource(self, "/")
        self.actions = Resource(self, "/actions")
        self.boot_source = Resource(self, "/boot-source")
        self.drives = Resource(self, "/drives", id_field="drive_id")
        self.entropy = Resource(self, "/entropy")
        self.logger = Resource(self, "/logger")
        self.machine_config = Resource(self, "/machine-config")
        self.metrics = Resource(self, "/metrics")
        self.mmds = Resource(self, "/mmds", secret=True)
        self.mmds_config = Resource(self, "/mmds/config")
        self.network_interfaces = Resource(self, "/network-interfaces", id_field="iface_id")
        self.snapshot_create = Resource(self, "/snapshot/create")
        self.snapshot_load = Resource(self, "/snapshot/load")
        self.version = Resource(self, "/version")
        self.vm = Resource(self, "/vm")
        self.vm_config = Resource(self, "/vm/config")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        secret: bool = False,
    ) -> httpx.Response:
        """Send one request; return the 2xx response or raise BackendError."""
        try:
            response = await self._http.request(
                method,
                path,
                json=dict(body) if body is not None else None,
                timeout=timeout_s if timeout_s is not None else self.timeout_s,
            )
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BackendError(f"firecracker {method} {path}: {reason}") from exc
        if response.is_success:
            return response
        fault = _fault_message(response)
        if secret and body is not None:
            fault = _scrub(fault, body)
        raise BackendError(f"firecracker {method} {path}: {fault}")

    async def close(self) -> None:
        """Close the connection (and the directory fd used for a long socket path)."""
        await self._http.aclose()
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = None


def _fault_message(response: httpx.Response) -> str:
    """Firecracker's ``fault_message``, or the start of whatever else it answered."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("fault_message"), str):
        return str(data["fault_message"])
    text = response.text.strip()[:200]
    return f"HTTP {response.status_code}" + (f" {text}" if text else "")


def _scrub(message: str, body: Mapping[str, Any]) -> str:
    """Remove every string value of a secret body from ``message`` (VMM errors may echo input)."""
    for value in _strings(body):
        if len(value) >= 4:
            message = message.replace(value, _REDACTED)
    return message


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []
