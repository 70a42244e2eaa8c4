"""Logins from one warm Browser VM template draw their own randomness, and expose nothing extra.

Several ``oidc`` logins one after another, each in a Browser VM restored from the same template:
the ``state``, ``nonce`` and PKCE ``code_challenge`` the agent put in each authorize URL are
pairwise different (the first issue: two users' logins drew the same ones). The controller here
runs with its defaults for DevTools: nothing but VNC is forwarded from the Browser VMs.
"""

from __future__ import annotations

import itertools
import urllib.parse

import pytest

from hearth.auth.flow import DEVTOOLS_PORT, VNC_PORT
from tests.e2e.flow_fixtures import *  # noqa: F403
from tests.e2e.flow_fixtures import E2eOidc
from tests.e2e.test_auth_flow import start, wait_status
from tests.vm.api_fixtures import Api
from tests.vm.browser_fixtures import *  # noqa: F403
from tests.vm.test_browser_vm import BROWSER_COLD_BOOT_DEADLINE_S

pytestmark = [pytest.mark.slow, pytest.mark.vm]

LOGINS = 3


# The product's default: no DevTools forwarded (the e2e fixture turns it on to play the user).
@pytest.mark.parametrize("auth_controller", [{"browser_devtools": False}], indirect=True)
async def test_oidc_logins_from_one_template_draw_their_own_state_nonce_and_challenge(
    auth_controller: Api, e2e_oidc: E2eOidc
) -> None:
    api = auth_controller
    # The first login builds the Browser VM template (a cold boot of Chromium): under a loaded
    # CI host that can take longer than the controller's default, and a VM that falls back to a
    # cold boot would prove nothing about clones.
    api.ctl.node.backend.cold_deadline_s = BROWSER_COLD_BOOT_DEADLINE_S
    seen: list[dict[str, str]] = []
    for index in range(LOGINS):
        session_id = await start(api, f"user-{index}")
        waiting = await wait_status(api, session_id, ("awaiting_user",))
        url = waiting["login_url"]
        assert url.startswith(e2e_oidc.issuer)
        browser = api.ctl.vms.live[waiting["browser_vm_id"]]
        assert browser.boot_mode.value == "restore"
        # Only the VNC port reaches the host; DevTools stays inside the Browser VM.
        assert set(browser.ports) == {VNC_PORT}
        assert DEVTOOLS_PORT not in browser.ports
        seen.append(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)))
        async with api.client() as admin:
            cancelled = await admin.post(f"/api/auth/session/{session_id}/cancel")
        assert cancelled.json()["session"]["status"] == "cancelled"
    for name in ("state", "nonce", "code_challenge"):
        values = [query[name] for query in seen]
        print(name, [v[:12] for v in values])
        assert all(a != b for a, b in itertools.combinations(values, 2)), f"{name} repeats"
