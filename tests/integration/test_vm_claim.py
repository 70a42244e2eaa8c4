"""The controller's claim of a real agent on loopback: it hands out no VM that did not reseed."""

from __future__ import annotations

import pytest

from hearth.errors import VmError
from hearth.vm.claim import claim_agent, new_agent_token
from tests.integration.conftest import AgentLauncher


async def test_a_claim_the_agent_did_not_reseed_is_refused(agent_launcher: AgentLauncher) -> None:
    # An agent that cannot reseed (here: told not to, as one outside a VM) still takes the token
    # and answers reseeded: false; the controller must not hand such a VM to anybody.
    agent = agent_launcher.start(
        "--token-file", str(agent_launcher.token_file), "--allow-claim", "--no-reseed"
    )

    with pytest.raises(VmError, match="did not reseed"):
        await claim_agent("vm-test", agent.base_url, new_agent_token())


async def test_a_second_claim_is_refused_with_the_agents_reason(
    agent_launcher: AgentLauncher,
) -> None:
    agent = agent_launcher.start(
        "--token-file", str(agent_launcher.token_file), "--allow-claim", "--no-reseed"
    )
    with pytest.raises(VmError):
        await claim_agent("vm-test", agent.base_url, new_agent_token())

    with pytest.raises(VmError, match=r"HTTP 409: agent is already claimed"):
        await claim_agent("vm-test", agent.base_url, new_agent_token())
