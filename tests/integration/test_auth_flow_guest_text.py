"""How a login that fails with a huge message ends, in process (the real controller and store,
VMs with real agents): the session's ``error_message`` and its ``auth.failed`` event, which the
store keeps for weeks and sends to every webhook, carry the same cut text (``guest_text``), never
the whole message (a guest's words may be megabytes of it).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from hearth.agent_answers import GUEST_TEXT_CHARS
from hearth.errors import VmError
from hearth.vm.types import VmType
from tests.integration.login_fixtures import *  # noqa: F403
from tests.integration.login_fixtures import TERMINAL, WAIT_DEADLINE_S, Login
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.store_fixtures import *  # noqa: F403

HUGE = "A" * 1_000_000


async def auth_failed_events(login: Login) -> list[dict[str, Any]]:
    """The data of the ``auth.failed`` events, once there is one (the session's move is written
    before its event)."""
    deadline = time.monotonic() + WAIT_DEADLINE_S
    while True:
        events = await login.api.ctl.store.events.list(after=0, limit=1000)
        failed = [json.loads(event.data) for event in events if event.type == "auth.failed"]
        if failed or time.monotonic() > deadline:
            return failed
        await asyncio.sleep(0.05)


async def test_a_huge_failure_is_cut_alike_in_the_session_and_its_auth_failed_event(
    login: Login,
) -> None:
    login.backend.fail_next = VmError(f"the VMM said {HUGE}")
    login.backend.fail_type = VmType.CLI
    session_id = await login.start()

    session = await login.wait_for(session_id, TERMINAL)

    assert session["status"] == "failed"
    error = session["error_message"]
    assert error.startswith("the CLI VM did not start: the VMM said AAAA")
    assert len(error) < GUEST_TEXT_CHARS + 100
    (data,) = await auth_failed_events(login)
    assert (data["sessionId"], data["status"]) == (session_id, "failed")
    assert data["error"] == error
