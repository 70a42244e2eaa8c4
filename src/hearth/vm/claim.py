"""The controller's side of claiming a VM's agent: its token, the host's clock, fresh randomness.

Every VM restored from one snapshot wakes with the template's memory: its clock, and its kernel's
CRNG state. ``POST /init`` is the first thing that reaches the guest after a restore; the agent
credits the host's entropy to the guest's pool and reseeds the CRNG (``RNDADDENTROPY`` then
``RNDRESEEDCRNG``) before it stores the token, and answers ``"reseeded": true``. A claim whose
answer does not say so fails: such a VM would hand its user the template's random numbers.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time

import httpx

from hearth.capped_reads import ResponseTooLarge, read_capped
from hearth.errors import VmError
from hearth.httpclient import async_client
from hearth.versions import version_problem
from hearth.vm.types import Vm

CLAIM_TIMEOUT_S = 10.0
# Bytes of host randomness sent with every claim: the guest credits them as full entropy, so they
# must come from the host's CSPRNG (never a derived or reused value). 64 bytes = 512 bits, twice
# what the kernel's CRNG key needs.
CLAIM_ENTROPY_BYTES = 64
# The most of the agent's answer read: it is a small JSON object; a guest may send anything.
CLAIM_MAX_ANSWER_BYTES = 64 * 1024


def new_agent_token() -> str:
    """A fresh bearer token for one VM's agent."""
    return secrets.token_urlsafe(32)


async def claim_agent(vm_id: str, agent_url: str, token: str) -> str | None:
    """``POST /init`` with the VM's token, the host's clock and fresh entropy; VmError unless the
    agent stored the token and reseeded the guest kernel's CRNG with that entropy. The agent's
    version, when it tells it."""
    body = {
        "token": token,
        "time": time.time(),
        "entropy": base64.b64encode(os.urandom(CLAIM_ENTROPY_BYTES)).decode(),
    }
    try:
        async with (
            async_client(timeout=CLAIM_TIMEOUT_S) as client,
            client.stream(
                "POST", f"{agent_url}/init", json=body, headers={"Accept-Encoding": "identity"}
            ) as response,
        ):
            status, raw = response.status_code, await read_capped(response, CLAIM_MAX_ANSWER_BYTES)
    except httpx.HTTPError as exc:
        raise VmError(f"VM {vm_id}: claiming the agent failed: {type(exc).__name__}") from exc
    except ResponseTooLarge as exc:
        raise VmError(
            f"VM {vm_id}: the agent answered its claim with more than {exc.limit} bytes"
        ) from exc
    if status != 200:
        reason = _error_message(raw)
        raise VmError(
            f"VM {vm_id}: the agent refused its claim (HTTP {status}"
            f"{': ' + reason if reason else ''}); was the template claimed?"
        )
    answer = _json_object(raw)
    if answer.get("reseeded") is not True:
        raise VmError(
            f"VM {vm_id}: the agent took its token but did not reseed the guest's random number "
            "generator (an agent older than the controller?); the VM is not handed out"
        )
    version = answer.get("version")
    if not isinstance(version, str) or not version or version_problem(version) is not None:
        return None  # none told, or none a VM's row can hold (NUL, control characters, too long)
    return version


async def claim_vm(vm: Vm, *, token: str | None = None) -> str:
    """Claim ``vm``'s agent with ``token`` (default: a fresh one) and set it on ``vm`` (held in
    memory only: the control plane keeps it sealed). VmError if it is already claimed."""
    if vm.token is not None:
        raise VmError(f"VM {vm.id} is already claimed")
    if vm.agent_url is None:
        raise VmError(f"VM {vm.id} has no agent address")
    token = token or new_agent_token()
    vm.agent_version = await claim_agent(vm.id, vm.agent_url, token)
    vm.token = token
    return token


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _error_message(raw: bytes) -> str:
    error = _json_object(raw).get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:200]
    return ""
