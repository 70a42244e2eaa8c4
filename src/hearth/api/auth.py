"""API keys: ``Authorization: Bearer <key>`` on every route but /health; admin-only guards."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hearth.api.context import Controller, controller
from hearth.errors import Forbidden, Unauthorized
from hearth.store import ApiKeyRecord, Store

# Where the key guard leaves the key it authenticated, in the request's state.
API_KEY_STATE = "api_key"


async def authenticate(store: Store, authorization: str) -> ApiKeyRecord:
    """The key an ``Authorization`` header carries, if it is valid; else Unauthorized."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    record = await store.api_keys.authenticate(value.strip())
    if record is None:
        raise Unauthorized("unknown or revoked API key")
    return record


# Declares the scheme in the OpenAPI (so clients and schemathesis know every route but /health
# needs it); the key guard has already checked the header when a route runs.
_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey", description="Bearer <API key>")


async def api_key(
    request: Request,
    ctl: Annotated[Controller, Depends(controller)],
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> ApiKeyRecord:
    """The authenticated key of the request (checked by the key guard before the body), or 401."""
    record: ApiKeyRecord | None = getattr(request.state, API_KEY_STATE, None)
    if record is None:
        record = await authenticate(ctl.store, request.headers.get("authorization", ""))
    request.state.user_id = record.user_id
    return record


async def admin_key(key: Annotated[ApiKeyRecord, Depends(api_key)]) -> ApiKeyRecord:
    """The authenticated key, which must be an admin key (else 403)."""
    if not key.is_admin:
        raise Forbidden("this needs an admin key")
    return key


async def optional_admin_key(request: Request, ctl: Controller) -> ApiKeyRecord | None:
    """The admin key the request presents, or None when it presents none. A key it presents is
    checked as on every route: unknown or revoked is 401, a user's key 403 (the key guard lets
    a public path's request through unchecked)."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return None
    key = await admin_key(await authenticate(ctl.store, authorization))
    request.state.user_id = key.user_id
    return key


def scope_of(key: ApiKeyRecord) -> str | None:
    """The user a key is limited to; None for admin keys (they see everything)."""
    return None if key.is_admin else key.user_id


Key = Annotated[ApiKeyRecord, Depends(api_key)]
AdminKey = Annotated[ApiKeyRecord, Depends(admin_key)]
Ctl = Annotated[Controller, Depends(controller)]
