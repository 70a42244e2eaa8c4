"""Credential expiry and the interval pull-back, in process on SQLite and PostgreSQL.

The expiry watch tells ``credential.expiring`` once a document is within the window and
``credential.expired`` once it is past, each once per document (a second look tells nothing;
a new document starts over), and counts documents per provider and state in ``/metrics``. The
pull-back on an interval brings a document a CLI VM's CLI refreshed (a real agent on loopback)
into the vault while the VM runs, so the watch then sees it valid.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hearth.agent_client import AgentClient
from hearth.bench.standins.documents import sample_document
from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, running_api
from tests.integration.conftest import AgentLauncher

EXPIRES = datetime(2030, 3, 17, 12, 0, tzinfo=UTC)


def claude_document(marker: str, expires: datetime) -> bytes:
    """Claude Code's document for ``marker``, its access token expiring at ``expires``."""
    document: dict[str, Any] = sample_document("claude_code", marker)
    document["claudeAiOauth"]["expiresAt"] = int(expires.timestamp() * 1000)
    return json.dumps(document).encode()


async def told(api: Api, event_type: str) -> list[dict[str, Any]]:
    events = (await api.client.get("/api/events", headers=api.headers())).json()["events"]
    return [event for event in events if event["type"] == event_type]


async def test_expiry_is_told_once_per_document_and_counted(api: Api) -> None:
    await api.client.post("/api/keys", json={"userId": "ann"}, headers=api.headers())
    await api.ctl.credentials.capture("ann", "claude_code", claude_document("a", EXPIRES))
    watch = api.ctl.expiry
    counts = await watch.check_once(now=EXPIRES - timedelta(days=3))
    assert counts == {("claude_code", "valid"): 1}
    assert await told(api, "credential.expiring") == []
    for _ in range(2):
        await watch.check_once(now=EXPIRES - timedelta(hours=2))
    (expiring,) = await told(api, "credential.expiring")
    assert expiring["userId"] == "ann"
    assert expiring["data"] == {"provider": "claude_code", "expiresAt": EXPIRES.isoformat()}
    metrics = (await api.client.get("/metrics", headers=api.headers())).text
    assert 'hearth_credentials{provider="claude_code",state="expiring"} 1.0' in metrics
    assert 'hearth_credentials{provider="codex",state="expiring"} 0.0' in metrics
    for _ in range(2):
        await watch.check_once(now=EXPIRES + timedelta(seconds=1))
    (expired,) = await told(api, "credential.expired")
    assert expired["data"]["provider"] == "claude_code"
    # A new document (a fresh login) is told about anew when it, too, nears its end.
    later = EXPIRES + timedelta(days=30)
    await api.ctl.credentials.capture("ann", "claude_code", claude_document("b", later))
    await watch.check_once(now=later - timedelta(hours=1))
    assert len(await told(api, "credential.expiring")) == 2


@pytest.fixture
async def pulling(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    settings = api_settings.with_overrides(pullback_interval_s=0.1)
    async with running_api(settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


async def test_a_document_refreshed_in_a_running_vm_reaches_the_vault_on_the_interval(
    pulling: Api,
) -> None:
    api = pulling
    created = await api.client.post("/api/vms", json={"userId": "ann"}, headers=api.headers())
    vm_id = created.json()["id"]
    await api.ctl.credentials.capture("ann", "claude_code", claude_document("a", EXPIRES))
    await api.ctl.delivery.deliver("ann", "claude_code", vm_id)
    # The CLI in the VM refreshes its token: the VM's copy now expires a week later.
    refreshed = claude_document("refreshed", EXPIRES + timedelta(days=7))
    agent = AgentClient(created.json()["agentUrl"], api.ctl.vms.agent_token(vm_id))
    await agent.put_credentials("claude_code", refreshed)
    async with asyncio.timeout(10):
        while (stored := await api.ctl.store.credentials.get("ann", "claude_code")) is None or (
            stored.expires_at != EXPIRES + timedelta(days=7)
        ):
            await asyncio.sleep(0.05)
    assert stored.delivered_to_vm_id == vm_id
    assert b"refreshed" in await api.ctl.credentials.document("ann", "claude_code")
    counts = await api.ctl.expiry.check_once(now=EXPIRES + timedelta(days=1))
    assert counts == {("claude_code", "valid"): 1}
    assert await told(api, "credential.expired") == []
