"""``/api/credentials/…`` and ``/api/vms/{id}/credentials``: what is stored and where, rotation
and deletion. Never a secret: documents stay in the vault and in the VMs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hearth.api.auth import Ctl, Key, scope_of
from hearth.api.routes.auth import user_for
from hearth.api.schemas import ERROR_RESPONSES
from hearth.credentials.errors import DecryptionFailed
from hearth.credentials.revoke import revoke_oidc_refresh_tokens
from hearth.errors import NotFound
from hearth.logging import get_logger
from hearth_agent.wire import Provider

router = APIRouter(tags=["credentials"], responses=ERROR_RESPONSES)
_log = get_logger("api.credentials")


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
    there is none; 409 naming a VM that may hold it but cannot be asked now."""
    user = user_for(user_id, key.user_id, key.is_admin)
    await _stored(ctl, user, provider)
    vault_copy = await _vault_copy(ctl, user) if provider is Provider.OIDC else []
    removal = await ctl.delivery.remove_everywhere(
        user, provider.value, then=lambda: ctl.store.credentials.delete(user, provider.value)
    )
    revocation = None
    if provider is Provider.OIDC:  # the vault's copy and the VMs' (refreshed since, maybe)
        documents = [*vault_copy, *removal.documents]
        revocation = await revoke_oidc_refresh_tokens(ctl.settings, documents)
        if not vault_copy and revocation == "revoked":
            revocation = "failed: the vault's copy did not open; its refresh token was not revoked"
    return {"userId": user, "provider": provider.value, "removedFrom": removal.vm_ids,
            "revocation": revocation}  # fmt: skip


async def _vault_copy(ctl: Ctl, user_id: str) -> list[bytes]:
    """The vault's ``oidc`` document (to revoke its refresh token), or none if it does not
    open: the delete goes on, as one that no longer opens is of no use to anyone either."""
    try:
        return [await ctl.credentials.document(user_id, Provider.OIDC.value)]
    except DecryptionFailed as exc:
        _log.warning("credential_unreadable_at_delete", user_id=user_id, error=exc.message)
        return []


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
