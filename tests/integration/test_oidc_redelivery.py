"""A delivery made again into the VM that already holds the login's ``oidc`` document (a
controller stopped at ``delivering`` after the agent wrote it, and the next one resumes the
session), against the real OAuth server whose refresh tokens rotate on use.

Meanwhile the VM's agent refreshed the document: the provider spent the refresh token the vault
still holds. Written over the VM's copy, the vault's older document would make the VM's next
refresh present a spent token, and the provider refuse the grant (``invalid_grant``): the user's
login lost. The VM's refresh comes back into the vault first, and the VM keeps refreshing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from hearth.agent_client import AgentClient
from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import running_api
from tests.integration.conftest import AgentLauncher
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer
from tests.integration.test_api_credentials import oidc_login
from tests.integration.test_oidc_refresh import MARGIN_S, until, vault_document


async def test_a_resumed_delivery_keeps_the_vms_refreshed_document_and_the_grant(
    api_settings: Settings,
    agent_launcher: AgentLauncher,
    tmp_path: Path,
    short_lived_oidc_server: OidcServer,
    agent_client: httpx.Client,
) -> None:
    issuer = short_lived_oidc_server
    first = await asyncio.to_thread(oidc_login, agent_client, issuer)
    settings = api_settings.with_overrides(
        oidc_issuer=issuer.issuer,
        oidc_client_id=issuer.client_id,
        oidc_refresh_margin_s=MARGIN_S,
        pullback_interval_s=3600.0,  # no periodic pull-back in between: the resume comes first
        cli_egress="off",  # the agents run on the host: straight to the issuer
    )
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        vm_id = await vm_for(api, "ann")
        await api.ctl.credentials.capture("ann", "oidc", json.dumps(first).encode())
        await api.ctl.delivery.deliver("ann", "oidc", vm_id)
        vm = api.ctl.vms.live_vm(vm_id)
        agent = AgentClient(vm.agent_url or "", api.ctl.vms.agent_token(vm_id), vm_id=vm_id)
        await until(agent.refresh_state, lambda s: s["refreshes"] >= 1, "the agent's refresh")
        assert (await vault_document(api.ctl, "ann"))["refresh_token"] == first["refresh_token"]

        # What the resumed session's handover does.
        await api.ctl.delivery.deliver_with(agent, "ann", "oidc", vm_id, fresh=True)

        held = json.loads(await agent.credentials_document("oidc") or b"{}")
        assert held["refresh_token"] != first["refresh_token"]
        assert await vault_document(api.ctl, "ann") == held
        # The VM's refreshes go on with the grant intact.
        state = await agent.refresh_state()
        later = await until(
            agent.refresh_state,
            lambda s: s["refreshes"] > state["refreshes"] or s["state"] == "refused",
            "the agent's next refresh",
            timeout_s=90.0,  # the agent's refreshes are 30 s apart at least
        )
        assert later["state"] == "refreshed", later
