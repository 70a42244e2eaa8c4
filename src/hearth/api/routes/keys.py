"""``/api/keys``: mint, list and revoke API keys (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from hearth.api.auth import AdminKey, Ctl
from hearth.api.paging import PAGE_LIMIT_DEFAULT, After, limit_of
from hearth.api.schemas import ERROR_RESPONSES, KeyCreate, KeyList, KeyOut

router = APIRouter(tags=["keys"], responses=ERROR_RESPONSES)


@router.post("/api/keys", status_code=201)
async def create_key(body: KeyCreate, key: AdminKey, ctl: Ctl) -> KeyOut:
    """Mint a key for a user; the key itself is in this response only (stored hashed)."""
    plaintext, record = await ctl.store.api_keys.create(body.user_id, admin=body.admin)
    return KeyOut.of(record, key=plaintext)


@router.get("/api/keys")
async def list_keys(
    key: AdminKey,
    ctl: Ctl,
    after: After = None,
    limit: Annotated[int, limit_of("Keys")] = PAGE_LIMIT_DEFAULT,
) -> KeyList:
    """Every key's metadata (never the keys), revoked ones included, oldest first, a page at a
    time: the next page is ``?after=`` the answer's ``nextAfter`` (null on the last page). A
    ``limit`` outside 1 to 1000 or an ``after`` naming no key is 422."""
    records, next_after = await ctl.store.api_keys.page_for(after=after, limit=limit)
    return KeyList(keys=[KeyOut.of(r) for r in records], next_after=next_after)


@router.delete("/api/keys/{key_id}")
async def revoke_key(key_id: str, key: AdminKey, ctl: Ctl) -> KeyOut:
    """Revoke a key; it stops authenticating at once."""
    return KeyOut.of(await ctl.store.api_keys.revoke(key_id))
