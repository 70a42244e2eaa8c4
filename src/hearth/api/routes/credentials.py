"""``/api/credentials/…`` and ``/api/vms/{id}/credentials``: what is stored and where, rotation
and deletion. Never a secret: documents stay in the vault and in the VMs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.routes.auth import user_for
from hearth.api.schemas import ERROR_RESPONSES
from hearth.credentials.revoke import revoke_oidc_refresh_tokens
from hearth.errors import NotFound
from hearth_agent.wire import Provider

router = APIRouter(tags=["credentials"], responses=ERROR_RESPONSES)


@router.get("/api/credentials/{user_id}")
async def credential_facts(user_id: str, key: Key, ctl: Ctl) -> dict[str, Any]:
    """Per provider: present, sha256, expiry, delivered_to — never the secret itself."""
    user = user_for(user_id, key.user_id, key.is_admin)
    return {"userId": user, "credentials": await ctl.credentials.summary(user)}


async def _stored(ctl: Ctl, user_id: str, provider: Provider) -> None:
    if await ctl.store.credentials.get(user_id, provider.value) is None:
        raise NotFound(f"user {user_id} has no {provider.value} credentials")


@router.post("/api/credentials/{user_id}/{provider}/rotate", status_code=202)
async def rotate_credentials(
    user_id: str, provider: Provider, key: Key, ctl: Ctl
) -> dict[str, Any]:
    """Start a fresh login for a provider the user is logged in to (404 otherwise); when it
    completes, its document replaces the old one in the vault and in the user's CLI VM (any
    other VM of the user that held the old one no longer does). Answers as
    ``POST /api/auth/start``: the session, and its view link this once."""
    user = user_for(user_id, key.user_id, key.is_admin)
    await _stored(ctl, user, provider)
    started = await ctl.auth.start(user, provider)
    session = started.session
    return {"sessionId": session.id, "status": session.status.value, "viewUrl": started.view_url}


@router.delete("/api/credentials/{user_id}/{provider}")
async def delete_credentials(
    user_id: str, provider: Provider, key: Key, ctl: Ctl
) -> dict[str, Any]:
    """Remove the user's document for a provider from every CLI VM of the user (its API
    closed to each; a paused or hibernated one runs for it and is put back) and from the
    vault; for ``oidc``, revoke its refresh tokens (the vault's, and each VM's, which may be
    newer) at the issuer (RFC 7009) when discovery names a ``revocation_endpoint``. 404 if
    there is none."""
    user = user_for(user_id, key.user_id, key.is_admin)
    await _stored(ctl, user, provider)
    document = await ctl.credentials.document(user, provider.value)
    removal = await ctl.delivery.remove_everywhere(user, provider.value)
    await ctl.store.credentials.delete(user, provider.value)
    revocation = None
    if provider is Provider.OIDC:  # the vault's copy and the VMs' (refreshed since, maybe)
        documents = [document, *removal.documents]
        revocation = await revoke_oidc_refresh_tokens(ctl.settings, documents)
    return {"userId": user, "provider": provider.value, "removedFrom": removal.vm_ids,
            "revocation": revocation}  # fmt: skip


@router.get("/api/vms/{vm_id}/credentials")
async def vm_credentials(vm_id: str, key: Key, ctl: Ctl) -> dict[str, Any]:
    """What a running CLI VM holds, per provider (as its agent reports it: present, sha256,
    expiry), with the vault's view: whether the vault's document is the one there, and when
    it was last pulled back from this VM."""
    record = await ctl.execs.runnable(vm_id, scope_of(key))
    stored = {c.provider: c for c in await ctl.store.credentials.list(record.user_id)}
    entries = []
    for facts in await ctl.delivery.in_vm(vm_id):
        vault = stored.get(Provider(str(facts["provider"])))
        pulled = (
            vault is not None
            and vault.delivered_to_vm_id == vm_id
            and (vault.source.value == "pulled_back")
        )
        entries.append(
            {
                "provider": facts["provider"],
                "present": bool(facts["present"]),
                "sha256": facts.get("sha256"),
                "expiresAt": facts.get("expires_at"),
                "inVault": vault is not None and vault.sha256 == facts.get("sha256"),
                "lastPulledBackAt": vault.updated_at.isoformat() if pulled and vault else None,
            }
        )
    return {"vmId": vm_id, "credentials": entries}
