"""The run service's test fixtures: a controller in process over VMs whose agents are real
processes on loopback, the run's CLI replaced by ``fake_run_cli.py`` (which replays lines the
real CLIs printed), and helpers to start runs and read their events. Test modules take the
fixtures with ``import *``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import aconnect_sse

from hearth.bench.standins.documents import sample_document
from hearth.config import Settings
from hearth.runs import RunCommand
from hearth.runs import run_command as real_run_command
from hearth_agent.wire import Provider
from tests.agent_backend import AgentBackend
from tests.integration.api_fixtures import Api, running_api
from tests.integration.conftest import AgentLauncher

__all__ = ["agents", "api_runs", "controller", "run_settings"]  # the fixtures `import *` brings in

FAKE_CLI = Path(__file__).with_name("fake_run_cli.py")
ANSWER = "Hello from the stand-in. The answer is 42."
RUN_CAP = 2
Event = tuple[int, str, dict[str, Any]]


def fake_command(provider: Provider, **options: Any) -> RunCommand:
    """The real command for ``provider``, run by the replaying stand-in program."""
    real = real_run_command(provider, **options)
    return RunCommand(argv=[sys.executable, str(FAKE_CLI)], stdin=real.stdin, env=real.env)


@pytest.fixture
def run_settings(api_settings: Settings) -> Settings:
    return api_settings.with_overrides(exec_max_per_vm=RUN_CAP, run_prompt_max_bytes=64 * 1024)


@pytest.fixture
def agents(agent_launcher: AgentLauncher) -> AgentBackend:
    """VMs whose agents are real processes on loopback."""
    return AgentBackend(agent_launcher)


Controller = Callable[[], AbstractAsyncContextManager[Api]]


@pytest.fixture
def controller(
    run_settings: Settings, agents: AgentBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Controller:
    """Starts a controller over the same state and VMs, once and again after it stopped."""
    monkeypatch.setattr("hearth.control.runs.run_command", fake_command)
    return lambda: running_api(run_settings, agents, tmp_path / "image")


@pytest.fixture
async def api_runs(
    run_settings: Settings,
    agents: AgentBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Api]:
    monkeypatch.setattr("hearth.control.runs.run_command", fake_command)
    async with running_api(run_settings, agents, tmp_path / "image") as api:
        yield api
        await api.ctl.runs.wait_idle()


async def logged_in_vm(
    api: Api, user: str, providers: tuple[str, ...] = ("claude_code",)
) -> tuple[str, dict[str, str]]:
    """A ready CLI VM of ``user``'s with each provider's login delivered by the auth flow."""
    headers = api.headers(await api.user_key(user))
    created = await api.client.post("/api/vms", json={}, headers=headers)
    assert created.status_code == 201, created.text
    vm_id = created.json()["id"]
    for provider in providers:
        document = json.dumps(sample_document(provider, user)).encode()
        await api.ctl.credentials.capture(user, provider, document)
        await api.ctl.delivery.deliver(user, provider, vm_id)
    return vm_id, headers


def script(lines: list[str], **options: Any) -> str:
    """A prompt that tells the replaying CLI what to print and how to end."""
    return json.dumps({"lines": lines, **options})


async def start(
    api: Api, vm_id: str, headers: dict[str, str], prompt: str, **body: Any
) -> dict[str, Any]:
    answer = await api.client.post(
        f"/api/vms/{vm_id}/runs",
        json={"provider": "claude_code", "prompt": prompt, **body},
        headers=headers,
    )
    assert answer.status_code == 202, answer.text
    run: dict[str, Any] = answer.json()
    return run


async def events_of(
    api: Api,
    vm_id: str,
    run_id: str,
    headers: dict[str, str],
    *,
    last_event_id: int | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The run's events (after ``last_event_id``), all of them or the first ``limit``."""
    sent = dict(headers)
    if last_event_id is not None:
        sent["Last-Event-ID"] = str(last_event_id)
    url = f"/api/vms/{vm_id}/runs/{run_id}/events"
    events: list[Event] = []
    async with aconnect_sse(api.client, "GET", url, headers=sent) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append((int(sse.id), sse.event, sse.json()))
            if limit is not None and len(events) >= limit:
                break
    return events


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and waiting to be reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def text_of(events: list[Event]) -> str:
    return "".join(data["text"] for _, kind, data in events if kind == "message.delta")


async def vm_status(api: Api, vm_id: str, headers: dict[str, str]) -> str:
    answer = await api.client.get(f"/api/vms/{vm_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    status: str = answer.json()["status"]
    return status
