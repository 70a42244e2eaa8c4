"""The controller's side of a VM's agent: claiming it with its token, clock and entropy."""

from __future__ import annotations

import base64
import os
import time

import httpx

from hearth.errors import VmError
from hearth.httpclient import async_client

CLAIM_TIMEOUT_S = 10.0


async def claim_agent(vm_id: str, agent_url: str, token: str) -> None:
    """``POST /init`` with the VM's token, the host's clock and fresh entropy.

    Clones wake with the template's clock and entropy pool; this is what makes them their own.
    """
    body = {
        "token": token,
        "time": time.time(),
        "entropy": base64.b64encode(os.urandom(64)).decode(),
    }
    try:
        async with async_client(timeout=CLAIM_TIMEOUT_S) as client:
            response = await client.post(f"{agent_url}/init", json=body)
    except httpx.HTTPError as exc:
        raise VmError(f"VM {vm_id}: claiming the agent failed: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise VmError(
            f"VM {vm_id}: the agent refused its token (HTTP {response.status_code}); "
            "was the template claimed?"
        )
