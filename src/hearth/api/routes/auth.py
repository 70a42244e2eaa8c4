"""``/api/auth/…``: start, watch and cancel logins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.paging import PAGE_LIMIT_DEFAULT, After, limit_of
from hearth.api.schemas import (
    ERROR_RESPONSES,
    ERROR_STATUSES,
    AuthSessionList,
    AuthSessionOut,
    RequestModel,
    UserId,
)
from hearth.errors import Forbidden, InvalidInput
from hearth.store import AuthSessionRecord
from hearth_agent.wire import Provider

router = APIRouter(tags=["auth"], responses=ERROR_RESPONSES)


class AuthStart(RequestModel):
    """``POST /api/auth/start``."""

    user_id: UserId | None = None
    provider: Provider


def session_body(record: AuthSessionRecord) -> dict[str, Any]:
    """The session as the original controller's clients read it (snake_case inside)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "session_id": record.id,
        "user_id": record.user_id,
        "provider": record.provider,
        "status": record.status.value,
        "vm_id": record.vm_id,
        "vm_ip": None,
        "browser_vm_id": record.browser_vm_id,
        "login_url": record.login_url,
        "error_message": record.error_message,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "completed_at": iso(record.completed_at),
    }


def user_for(body_user: str | None, key_user: str, admin: bool) -> str:
    user = body_user or (None if admin else key_user)
    if user is None:
        raise InvalidInput("userId: required with an admin key")
    if not admin and user != key_user:
        raise Forbidden(f"this key belongs to user {key_user}, not {user}")
    return user


# A provider this controller cannot log in to is refused at once, not failed in the background.
_START_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {
        **ERROR_RESPONSES[422],
        "description": f"{ERROR_STATUSES[422]}; also a provider this controller is not "
        "configured for (oidc without HEARTH_OIDC_ISSUER): no login was started",
    }
}


@router.post("/api/auth/start", status_code=202, responses=_START_RESPONSES)
async def start_auth(body: AuthStart, key: Key, ctl: Ctl) -> dict[str, Any]:
    """Start a login (or return the active one); the flow runs in the background.

    ``viewUrl`` (the token-gated page where the user watches and types) is in this response
    only for the request that created the session, and never stored: it is null when a login
    was already in progress (cancel it and start again for a new link).
    """
    user = user_for(body.user_id, key.user_id, key.is_admin)
    started = await ctl.auth.start(user, body.provider, api_key_id=key.id)
    session = started.session
    return {"sessionId": session.id, "status": session.status.value, "viewUrl": started.view_url}


@router.get("/api/auth/session/{session_id}")
async def get_session(session_id: str, key: Key, ctl: Ctl) -> dict[str, Any]:
    """One session (another user's is 404)."""
    record = await ctl.auth.get(session_id, user_id=scope_of(key))
    session = session_body(record)
    if record.vm_id:
        vm = await ctl.store.vms.get(record.vm_id)
        session["vm_ip"] = vm.ip
    return {"session": session}


@router.post("/api/auth/session/{session_id}/cancel")
async def cancel_session(session_id: str, key: Key, ctl: Ctl) -> dict[str, Any]:
    """Cancel a session that has not ended (its Browser VM is destroyed)."""
    record = await ctl.auth.cancel(session_id, user_id=scope_of(key))
    return {"session": session_body(record)}


@router.get("/api/auth/sessions")
async def list_sessions(
    key: Key,
    ctl: Ctl,
    user_id: Annotated[str | None, Query(alias="userId")] = None,
    after: After = None,
    limit: Annotated[int, limit_of("Sessions")] = PAGE_LIMIT_DEFAULT,
) -> AuthSessionList:
    """Sessions, oldest first (a user key sees its own only), a page at a time: the next page
    is ``?after=`` the answer's ``nextAfter`` (null on the last page). A ``limit`` outside 1 to
    1000 or an ``after`` naming no session of the caller's is 422."""
    scope = scope_of(key)
    if scope is not None and user_id not in (None, scope):
        raise Forbidden(f"this key belongs to user {scope}, not {user_id}")
    records, next_after = await ctl.store.auth_sessions.page_for(
        user_id=scope or user_id, after=after, limit=limit
    )
    return AuthSessionList(
        sessions=[AuthSessionOut(**session_body(r)) for r in records], next_after=next_after
    )
