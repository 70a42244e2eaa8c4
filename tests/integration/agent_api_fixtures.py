"""The controller in process over VMs whose agents are real processes on loopback
(``AgentBackend``), on the test's database; and a VM an admin creates for a user. Test modules
take the fixture with ``import *``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import Api, running_api
from tests.integration.conftest import AgentLauncher

__all__ = ["agent_api"]


@pytest.fixture
async def agent_api(
    api_settings: Settings, agent_launcher: AgentLauncher, tmp_path: Path
) -> AsyncIterator[Api]:
    """The app with its lifespan entered, over VMs with real agents."""
    async with running_api(api_settings, AgentBackend(agent_launcher), tmp_path / "image") as api:
        yield api


async def vm_for(api: Api, user: str) -> str:
    """A ready CLI VM the admin created for ``user``; its id."""
    created = await api.client.post("/api/vms", json={"userId": user}, headers=api.headers())
    assert created.status_code == 201, created.text
    vm_id: str = created.json()["id"]
    return vm_id
