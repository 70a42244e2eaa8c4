"""The guest's clock after a wake or a resume, in process over VMs whose agents are real
processes on loopback, on SQLite and PostgreSQL.

An agent run outside a VM (``--no-reseed``, as ``AgentBackend`` runs them) may not set the
host's clock: it answers ``POST /clock`` with ``clockSet: false``, as an agent whose kernel
refuses would. The controller must not take that answer for a clock set.
"""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration.agent_api_fixtures import *  # noqa: F403
from tests.integration.agent_api_fixtures import vm_for
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api


async def act(api: Api, vm_id: str, action: str, status: str) -> None:
    answer = await api.client.post(f"/api/vms/{vm_id}/{action}", headers=api.headers())
    assert (answer.status_code, answer.json()["status"]) == (200, status), answer.text


def clock_logs(logs: list[dict[str, Any]], vm_id: str) -> list[dict[str, Any]]:
    return [r for r in logs if r.get("vm_id") == vm_id and r["event"] == "vm_clock_not_set"]


@pytest.mark.parametrize("asleep", ["hibernated", "paused"])
async def test_a_clock_the_agent_did_not_set_is_a_warning_naming_the_vm_and_why(
    agent_api: Api, asleep: str
) -> None:
    api = agent_api
    vm_id = await vm_for(api, "ann")
    await act(api, vm_id, "hibernate" if asleep == "hibernated" else "pause", asleep)
    with capture_logs() as logs:
        await act(api, vm_id, "resume", "ready")  # the clock not set does not fail the wake
    (warning,) = clock_logs(logs, vm_id)
    assert warning["log_level"] == "warning"
    assert "did not answer that it set the clock" in warning["reason"], warning
    assert isinstance(warning["offset_s"], float)  # how far off the guest's clock stays
    if asleep == "hibernated":
        (woken,) = [r for r in logs if r["event"] == "vm_woken"]
        assert (woken["vm_id"], woken["clock_set"]) == (vm_id, False)
