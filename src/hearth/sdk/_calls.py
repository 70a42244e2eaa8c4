"""Each API call as data: method, path, body, and how its answer is read. No I/O here: the sync
and async clients send a ``Call`` and hand the answer back to ``Call.result``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from hearth.sdk._errors import HearthApiError
from hearth.sdk._models import AuthSessionInfo, VmInfo

T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class Call(Generic[T_co]):
    """One request, and what its JSON answer becomes."""

    method: str
    path: str
    parse: Callable[[Any], T_co]
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    # The server answers once a VM has booted: the client's boot timeout, not its usual one.
    waits_for_boot: bool = False

    def send_args(self, *, boot_timeout_s: float) -> dict[str, Any]:
        """What ``httpx.Client.request`` / ``AsyncClient.request`` take to send this call (one
        that waits for a boot with ``boot_timeout_s``, any other with the client's timeout)."""
        args: dict[str, Any] = {
            "method": self.method,
            "url": self.path,
            "json": self.json,
            "params": self.params,
        }
        if self.waits_for_boot:
            args["timeout"] = boot_timeout_s
        return args

    def result(self, status: int, content: bytes) -> T_co:
        """The answer read; HearthApiError when it is the API's error, or not the API's answer
        at all (a redirect, a body that is not JSON: a proxy's, or a wrong URL's)."""
        if not 200 <= status < 300:
            raise HearthApiError.of_answer(status, content)
        try:
            return self.parse(json.loads(content) if content else None)
        except (ValueError, TypeError, KeyError) as exc:
            raise HearthApiError(
                status,
                "unexpected_answer",
                f"{self.method} {self.path}: not the API's answer ({exc})",
            ) from exc


def _vm_path(vm_id: str, action: str = "") -> str:
    return f"/api/vms/{quote(vm_id, safe='')}{action}"


def _session_path(session_id: str, action: str = "") -> str:
    return f"/api/auth/session/{quote(session_id, safe='')}{action}"


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# A VM's lifetime fields, as the SDK names them and as the API does.
LIFETIME_FIELDS = {
    "timeout_s": "timeoutS",
    "timeout_action": "timeoutAction",
    "idle_timeout_s": "idleTimeoutS",
    "idle_action": "idleAction",
    "auto_resume": "autoResume",
}


def lifetime_body(lifetime: Mapping[str, object]) -> dict[str, object]:
    """The API's fields for ``lifetime`` (snake_case keys; a timeout of None: no limit)."""
    unknown = sorted(set(lifetime) - set(LIFETIME_FIELDS))
    if unknown:
        raise TypeError(
            f"not lifetime fields: {', '.join(unknown)} (known: {', '.join(LIFETIME_FIELDS)})"
        )
    return {LIFETIME_FIELDS[name]: value for name, value in lifetime.items()}


def create_vm(
    vm_type: str,
    *,
    user_id: str | None,
    vcpus: int | None,
    mem_mib: int | None,
    wait: bool,
    lifetime: Mapping[str, object] | None = None,
) -> Call[VmInfo]:
    """``POST /api/vms``: with ``wait``, answered once the VM's agent is healthy."""
    body = _given(vmType=vm_type, userId=user_id, vcpus=vcpus, memMib=mem_mib)
    body.update(lifetime_body(lifetime or {}))
    return Call(
        "POST",
        "/api/vms",
        VmInfo.from_wire,
        json=body,
        params={"wait": "true" if wait else "false"},
        waits_for_boot=wait,
    )


def list_vms(
    *, status: Sequence[str] | None = None, after: str | None = None
) -> Call[tuple[list[VmInfo], str | None]]:
    """``GET /api/vms``: a page of the caller's VMs (everybody's for an admin key), oldest
    first, in ``status`` (default: all but destroyed), after VM ``after``; and the ``after``
    of the next page (None: this is the last, or a server that does not page)."""
    if isinstance(status, str):
        status = [status]  # one status, not its letters
    params = _given(status=",".join(status) if status else None, after=after)

    def page(body: Any) -> tuple[list[VmInfo], str | None]:
        return [VmInfo.from_wire(vm) for vm in body["vms"]], body.get("nextAfter")

    return Call("GET", "/api/vms", page, params=params or None)


def get_vm(vm_id: str) -> Call[VmInfo]:
    """``GET /api/vms/{id}``."""
    return Call("GET", _vm_path(vm_id), VmInfo.from_wire)


def destroy_vm(vm_id: str) -> Call[VmInfo]:
    """``DELETE /api/vms/{id}`` (idempotent)."""
    return Call("DELETE", _vm_path(vm_id), VmInfo.from_wire)


def change_vm(vm_id: str, lifetime: Mapping[str, object]) -> Call[VmInfo]:
    """``PATCH /api/vms/{id}``: set the lifetime fields given, keep the others."""
    return Call("PATCH", _vm_path(vm_id), VmInfo.from_wire, json=lifetime_body(lifetime))


def pause_vm(vm_id: str) -> Call[VmInfo]:
    """``POST /api/vms/{id}/pause``."""
    return Call("POST", _vm_path(vm_id, "/pause"), VmInfo.from_wire)


def hibernate_vm(vm_id: str) -> Call[VmInfo]:
    """``POST /api/vms/{id}/hibernate``."""
    return Call("POST", _vm_path(vm_id, "/hibernate"), VmInfo.from_wire)


def resume_vm(vm_id: str) -> Call[VmInfo]:
    """``POST /api/vms/{id}/resume``."""
    return Call("POST", _vm_path(vm_id, "/resume"), VmInfo.from_wire)


def open_terminal(vm_id: str, base_url: str) -> Call[str]:
    """``POST /api/vms/{id}/terminal``: a one-time link to a terminal page, made absolute on
    ``base_url`` (the API's own URL; the link's token is in its fragment)."""
    return Call("POST", _vm_path(vm_id, "/terminal"), lambda body: f"{base_url}{body['url']}")


def start_auth(user_id: str | None, provider: str) -> Call[AuthSessionInfo]:
    """``POST /api/auth/start``: a login for ``provider`` (the active one if one runs)."""

    def parse(body: dict[str, Any]) -> AuthSessionInfo:
        return AuthSessionInfo.from_wire({"provider": provider, "userId": user_id, **body})

    return Call("POST", "/api/auth/start", parse, json=_given(userId=user_id, provider=provider))


def _session(body: dict[str, Any]) -> AuthSessionInfo:
    return AuthSessionInfo.from_wire(body["session"])


def get_auth(session_id: str) -> Call[AuthSessionInfo]:
    """``GET /api/auth/session/{id}``."""
    return Call("GET", _session_path(session_id), _session)


def cancel_auth(session_id: str) -> Call[AuthSessionInfo]:
    """``POST /api/auth/session/{id}/cancel``: answered once the login's Browser VM is gone."""
    return Call("POST", _session_path(session_id, "/cancel"), _session)


def list_auth(
    user_id: str | None, *, after: str | None = None
) -> Call[tuple[list[AuthSessionInfo], str | None]]:
    """``GET /api/auth/sessions``: a page of sessions, oldest first, after session ``after``;
    and the ``after`` of the next page (None: this is the last, or a server that does not
    page)."""

    def page(body: Any) -> tuple[list[AuthSessionInfo], str | None]:
        return [AuthSessionInfo.from_wire(s) for s in body["sessions"]], body.get("nextAfter")

    return Call("GET", "/api/auth/sessions", page, params=_given(userId=user_id, after=after))
