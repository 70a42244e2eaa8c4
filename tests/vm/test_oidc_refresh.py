"""A real CLI VM refreshes its ``oidc`` document itself, through its egress path.

The OAuth server (npm oidc-provider, access tokens of a few seconds, refresh tokens rotating) runs
on the host's loopback; the VM reaches it only through its egress proxy, where the issuer's
address is pinned (the way the tests pin every provider host). A login done beforehand (through an
agent on the host, as in a Browser VM) is delivered into the VM; its agent refreshes before expiry
through the proxy, the provider then refuses the used refresh token, and the pull-back brings the
refreshed document into the vault.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest

from hearth.agent_client import AgentClient
from hearth.config import Settings
from hearth.images.manifest import ImageDir
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import SHORT_ACCESS_TOKEN_TTL_S, OidcServer
from tests.integration.store_fixtures import *  # noqa: F403
from tests.integration.test_api_credentials import oidc_login
from tests.integration.test_oidc_refresh import until, vault_document
from tests.vm.api_fixtures import serve_owned
from tests.vm.test_api import sqlite_only

pytestmark = [pytest.mark.slow, pytest.mark.vm, sqlite_only]
# Under TCG the agent's refresh round takes a while: refresh with a second to spare.
MARGIN_S = SHORT_ACCESS_TOKEN_TTL_S - 1.0
WAIT_S = 90.0


async def logged_in(tmp_path: Path, server: OidcServer) -> dict[str, object]:
    """A document from a real login, through an agent on the host."""
    launcher = AgentLauncher(tmp_path / "login-agent")
    try:
        agent = launcher.start_with_token()
        with agent.client(agent.token) as client:
            return await asyncio.to_thread(oidc_login, client, server)
    finally:
        launcher.close()


async def test_the_vm_refreshes_through_its_egress_path_and_the_vault_follows(
    database_url: str,
    tmp_path: Path,
    minimal_image: ImageDir,
    vm_state_dir: Path,
    short_lived_oidc_server: OidcServer,
) -> None:
    server = short_lived_oidc_server
    first = await logged_in(tmp_path, server)
    issuer = f"127.0.0.1:{server.port}"
    settings = Settings.from_env(
        {
            "HEARTH_STATE_DIR": str(tmp_path / "state"),
            "HEARTH_DATABASE_URL": database_url,
            # The VM's proxy dials the loopback issuer only because it is pinned.
            "HEARTH_EGRESS_PINS": f"{issuer}={issuer}",
        }
    ).with_overrides(
        oidc_issuer=server.issuer,
        oidc_client_id=server.client_id,
        oidc_refresh_margin_s=MARGIN_S,
        pullback_interval_s=0.5,
    )
    async for api in serve_owned(settings, minimal_image=minimal_image, vm_state_dir=vm_state_dir):
        async with api.client() as admin:
            created = await admin.post("/api/vms", json={"userId": "ann"})
            assert created.status_code == 201, created.text
            vm_id = created.json()["id"]
            await api.ctl.credentials.capture("ann", "oidc", json.dumps(first).encode())
            await api.ctl.delivery.deliver("ann", "oidc", vm_id)
            network = (await admin.get(f"/api/vms/{vm_id}/network")).json()
            assert issuer in network["allow"], network
            agent = AgentClient(created.json()["agentUrl"], api.ctl.vms.agent_token(vm_id))
            state = await until(
                agent.refresh_state,
                lambda s: s["refreshes"] >= 1,
                "the agent's first refresh",
                timeout_s=WAIT_S,
                every_s=0.5,
            )
            assert state["state"] == "refreshed", state
            assert state["proxy"] == api.ctl.networks.proxy_url(vm_id)
            vault = await until(
                functools.partial(vault_document, api.ctl, "ann"),
                lambda d: d["refresh_token"] != first["refresh_token"],
                "the refreshed document in the vault",
                timeout_s=WAIT_S,
                every_s=0.2,
            )
            traffic = (await admin.get(f"/api/vms/{vm_id}/network")).json()["traffic"]
        # Each refresh is two tunnels through the VM's path (discovery, the token endpoint).
        assert traffic["tunnels"] >= 2 * state["refreshes"], traffic
        assert traffic["refused"] == 0, traffic
        assert vault["expires_at"] > first["expires_at"]
        reused = await server.refresh_grant(str(first["refresh_token"]))
        assert reused.json()["error"] == "invalid_grant"
