"""``AgentClient``'s errors name the VM, not the agent's address, which they carry apart (for
logs): against a loopback port nothing listens on."""

from __future__ import annotations

import socket

import pytest

from hearth.agent_client import AgentClient, AgentError


def closed_port() -> int:
    """A loopback port that was free a moment ago (nothing listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("vm_id", "name"), [("vm-1", "the agent of VM vm-1"), (None, "the VM's agent")]
)
async def test_an_agent_that_does_not_answer_is_named_by_its_vm_its_url_kept_apart(
    vm_id: str | None, name: str
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(AgentError) as raised:
        await AgentClient(url, None, timeout_s=2.0, vm_id=vm_id).health()
    assert raised.value.message == f"{name} did not answer GET /health: ConnectError"
    assert raised.value.agent_url == url
    assert raised.value.agent_code is None
