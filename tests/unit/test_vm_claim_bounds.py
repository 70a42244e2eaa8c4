"""The claim reads the agent's answer to ``POST /init`` within a size limit.

The claim is the controller's first request to a freshly restored guest; whatever answers on its
agent port is the guest's to choose, and may answer without end.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from hearth.errors import VmError
from hearth.vm.claim import CLAIM_MAX_ANSWER_BYTES, claim_agent, new_agent_token
from tests.unit.test_agent_client_bounds import FLOOD_BYTES, Body, LoopbackAgent, Sent, flood


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


def answer(text: bytes) -> Body:
    """The whole answer ``text``, then the end."""

    async def write(writer: asyncio.StreamWriter, sent: Sent) -> None:
        writer.write(text)
        sent.body_bytes += len(text)

    return write


@pytest.mark.parametrize(
    ("told", "kept"),
    [
        ("0.1.1", "0.1.1"),
        ("", None),
        ("1.0\u0000", None),  # PostgreSQL refuses a NUL in text: the VM's row could not be written
        ("1.0\n2", None),
        ("9" * 33, None),  # longer than the row's column
    ],
)
async def test_the_claim_keeps_only_a_version_a_vms_row_can_hold(
    told: str, kept: str | None
) -> None:
    body = json.dumps({"reseeded": True, "version": told}).encode()
    async with LoopbackAgent(200, "application/json", answer(body)).serving() as agent:
        version = await asyncio.wait_for(claim_agent("vm-1", agent.url, new_agent_token()), 60.0)
    assert version == kept
