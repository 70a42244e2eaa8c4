"""Wire schemas of the API (camelCase JSON, unknown fields rejected)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt
from pydantic.alias_generators import to_camel

from hearth.api.nul import NulFree
from hearth.config import MAX_TIMEOUT_S
from hearth.control.lifetimes import Lifetime, used_s
from hearth.store import ApiKeyRecord, VmRecord
from hearth.store.records import utc_now
from hearth.store.repositories.users import POOL_USER, USER_ID_PATTERN
from hearth.versions import is_outdated
from hearth.vm.types import MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB, LifetimeAction


def _not_reserved(user_id: str) -> str:
    if user_id == POOL_USER:
        raise ValueError(f"{POOL_USER!r} is reserved for the warm pool's VMs")
    return user_id


UserId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=USER_ID_PATTERN),
    AfterValidator(_not_reserved),
]


# A listing page's ``nextAfter``: the keyset cursor of the page after it (``hearth.api.paging``).
NextAfter = Annotated[
    str | None, Field(description="`after` for the next page; null when this page is the last")
]


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, nothing unknown accepted."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    @classmethod
    def of_record(cls, record: object, **wire_only: object) -> Self:
        """A store record on the wire: each field from the record's attribute of that name
        (enum members become their values), then ``wire_only`` for the fields it lacks."""
        values = {name: getattr(record, name) for name in cls.model_fields if hasattr(record, name)}
        return cls.model_validate({**values, **wire_only})


class RequestModel(WireModel, NulFree):
    """A request body: as any wire model, and no NUL in its text (``hearth.api.nul``)."""


TimeoutS = Annotated[StrictInt, Field(ge=1, le=MAX_TIMEOUT_S)]
Action = Literal["pause", "hibernate", "destroy"]


class VmLifetimeFields(RequestModel):
    """A CLI VM's lifetime: ``timeoutS`` running seconds (paused or hibernated time does not
    count) and
    ``idleTimeoutS`` seconds without use, each then doing its action; ``autoResume``: a call
    that needs the VM running resumes it when paused. A timeout given as null is no limit; a
    field not given (or an action given as null) keeps its value, at creation the controller's
    default (``HEARTH_VM_TIMEOUT_S``, ``HEARTH_VM_IDLE_TIMEOUT_S`` and their actions). An
    action of ``hibernate`` is refused (422) where the host's VMM cannot hibernate."""

    timeout_s: TimeoutS | None = Field(None, description="Running seconds it may live")
    timeout_action: Action | None = Field(None, description="What the end of timeoutS does")
    idle_timeout_s: TimeoutS | None = Field(None, description="Seconds unused before idleAction")
    idle_action: Action | None = Field(None, description="What the end of idleTimeoutS does")
    auto_resume: StrictBool | None = Field(
        None, description="Resume the VM when paused and a call needs it (default true)"
    )

    def lifetime(self, base: Lifetime) -> Lifetime:
        """``base`` with the fields this body gives (the others as they were)."""
        given = {name: getattr(self, name) for name in self.model_fields_set & LIFETIME_FIELDS}
        for name in ("timeout_action", "idle_action", "auto_resume"):
            if given.get(name, "") is None:
                del given[name]
        for name in ("timeout_action", "idle_action"):
            if name in given:
                given[name] = LifetimeAction(given[name])
        return dataclasses.replace(base, **given)


LIFETIME_FIELDS = frozenset(VmLifetimeFields.model_fields)


class VmCreate(VmLifetimeFields):
    """``POST /api/vms`` (lifetime fields not given take the settings' defaults)."""

    user_id: UserId | None = None
    vm_type: Literal["cli", "browser"] = "cli"
    vcpus: Annotated[StrictInt, Field(ge=1, le=MAX_VCPUS)] | None = None
    mem_mib: Annotated[StrictInt, Field(ge=MIN_MEM_MIB, le=MAX_MEM_MIB)] | None = None


class VmLifetimePatch(VmLifetimeFields):
    """``PATCH /api/vms/{id}``: the fields given are set, the others kept."""


class VmOut(WireModel):
    """A VM as the API shows it (never its token, except once at creation)."""

    id: str
    user_id: str
    vm_type: str
    status: str
    backend: str
    vcpus: int
    mem_mib: int
    agent_url: str | None
    boot_mode: str | None
    disk_bytes: int | None
    created_at: datetime
    ready_at: datetime | None
    destroyed_at: datetime | None
    error: str | None
    agent_version: str | None = Field(
        None, description="The version the VM's agent last reported (claim, heartbeat)"
    )
    agent_outdated: bool = Field(
        False, description="Whether that version is below HEARTH_AGENT_MIN_VERSION"
    )
    agent_token: str | None = None
    timeout_s: int | None = None
    timeout_action: str = "destroy"
    idle_timeout_s: int | None = None
    idle_action: str = "pause"
    auto_resume: bool = True
    lifetime_used_s: float = Field(0.0, description="Running seconds used of timeoutS so far")
    hibernated_at: datetime | None = Field(None, description="When it was last hibernated")

    @classmethod
    def of(
        cls, record: VmRecord, *, min_agent_version: str, agent_token: str | None = None
    ) -> VmOut:
        """The wire form of a VM record (its agent outdated below ``min_agent_version``)."""
        return cls.of_record(
            record,
            agent_outdated=is_outdated(record.agent_version, min_agent_version),
            agent_token=agent_token,
            lifetime_used_s=round(used_s(record, utc_now()), 3),
        )


class WorkspaceOut(WireModel):
    """A user's persistent workspace volume."""

    user_id: str
    size_mib: int
    attached_vm_id: str | None = Field(None, description="The active VM that holds it, if any")
    created_at: datetime


class VmList(WireModel):
    """``GET /api/vms``: a page of VMs, oldest first, and where the next one starts."""

    vms: list[VmOut]
    next_after: NextAfter = None


class AuthSessionOut(BaseModel):
    """A login session as the original controller's clients read it (snake_case inside)."""

    session_id: str
    user_id: str
    provider: str
    status: str
    vm_id: str | None
    vm_ip: str | None = Field(description="The CLI VM's address (only on a single session)")
    browser_vm_id: str | None
    login_url: str | None
    error_message: str | None
    created_at: str | None
    updated_at: str | None
    completed_at: str | None


class AuthSessionList(WireModel):
    """``GET /api/auth/sessions``: a page of sessions, oldest first, and where the next one
    starts."""

    sessions: list[AuthSessionOut]
    next_after: NextAfter = None


class KeyCreate(RequestModel):
    """``POST /api/keys``."""

    user_id: UserId
    admin: StrictBool = False


class KeyOut(WireModel):
    """An API key's metadata; ``key`` is present only in the response that created it."""

    id: str
    user_id: str
    admin: bool
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None

    @classmethod
    def of(cls, record: ApiKeyRecord, *, key: str | None = None) -> KeyOut:
        """The wire form of a key record."""
        return cls.of_record(record, admin=record.is_admin, key=key)


class KeyList(WireModel):
    """``GET /api/keys``: a page of keys, oldest first, and where the next one starts."""

    keys: list[KeyOut]
    next_after: NextAfter = None


class ErrorDetail(BaseModel):
    """The inner error object."""

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error response."""

    error: ErrorDetail


_PLAIN = "text/plain; charset=utf-8"
# Every error status a route behind the key guard can answer, and what it means.
ERROR_STATUSES: dict[int, str] = {
    400: "Malformed request (e.g. the body is not JSON); malformed HTTP itself (a bad "
    "Content-Length) is refused by the HTTP server before the API, in plain text",
    401: "Missing or wrong API key",
    403: "Not allowed for this key (admin only, or another user's)",
    404: "Not found (or not yours)",
    409: "Conflict or quota exceeded; workspace_unusable: the user's workspace volume will not "
    "attach or mount (DELETE /api/users/{id}/workspace removes it, to start afresh)",
    413: "Request body over HEARTH_MAX_BODY_BYTES (refused unread)",
    422: "Invalid input; the message names the field",
    429: "Host capacity exhausted, or the VM runs as many commands as allowed; retry later",
    500: "Internal error (generic message with a request id), or a named failure such as "
    "saved_state_corrupt (a hibernated VM's saved state is missing or does not open)",
    501: "The selected VMM cannot do this (not_supported), e.g. hibernate under Firecracker",
    502: "The VMM or the VM's agent failed (vm_process_exited, backend_error)",
    503: "Not available on this host yet (image_not_built, tool_missing)",
    504: "The VM's agent did not become healthy in time (vm_not_ready)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` for ``statuses`` (default: all), each an ``ErrorOut``; a 400 may
    also be the HTTP server's own plain-text refusal of a request it cannot parse."""
    return {
        status: {
            "model": ErrorOut,
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {}, **({_PLAIN: {}} if status == 400 else {})},
        }
        for status in statuses or ERROR_STATUSES
    }


ERROR_RESPONSES = error_responses()

HealthStatus = Literal["ok", "degraded"]
