"""The claim reads the agent's answer to ``POST /init`` within a size limit.

The claim is the controller's first request to a freshly restored guest; whatever answers on its
agent port is the guest's to choose, and may answer without end.
"""

from __future__ import annotations

import asyncio

import pytest

from hearth.errors import VmError
from hearth.vm.claim import CLAIM_MAX_ANSWER_BYTES, claim_agent, new_agent_token
from tests.unit.test_agent_client_bounds import FLOOD_BYTES, LoopbackAgent, flood


@pytest.mark.parametrize("status", [200, 409])
async def test_a_claim_answered_without_end_fails_after_about_the_cap(status: int) -> None:
    async with LoopbackAgent(status, "application/json", flood(b'{"a":"', b"x")).serving() as agent:
        with pytest.raises(VmError) as refused:
            await asyncio.wait_for(claim_agent("vm-1", agent.url, new_agent_token()), 60.0)
        sent = agent.sent.body_bytes
    assert str(refused.value) == (
        f"VM vm-1: the agent answered its claim with more than {CLAIM_MAX_ANSWER_BYTES} bytes"
    )
    assert sent < FLOOD_BYTES // 2
