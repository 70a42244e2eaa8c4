"""API keys: ``Authorization: Bearer <key>`` on every route but /health; admin-only guards."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hearth.api.context import Controller, controller
from hearth.errors import Forbidden, Unauthorized
from hearth.store import ApiKeyRecord


async def api_key(
    request: Request, ctl: Annotated[Controller, Depends(controller)]
) -> ApiKeyRecord:
    """The authenticated key of the request, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    record = await ctl.store.api_keys.authenticate(value.strip())
    if record is None:
        raise Unauthorized("unknown or revoked API key")
    request.state.user_id = record.user_id
    return record


async def admin_key(key: Annotated[ApiKeyRecord, Depends(api_key)]) -> ApiKeyRecord:
    """The authenticated key, which must be an admin key (else 403)."""
    if not key.is_admin:
        raise Forbidden("this needs an admin key")
    return key


def scope_of(key: ApiKeyRecord) -> str | None:
    """The user a key is limited to; None for admin keys (they see everything)."""
    return None if key.is_admin else key.user_id


Key = Annotated[ApiKeyRecord, Depends(api_key)]
AdminKey = Annotated[ApiKeyRecord, Depends(admin_key)]
Ctl = Annotated[Controller, Depends(controller)]
