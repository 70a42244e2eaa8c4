"""``hearth exec`` and ``hearth run`` as a user runs them: the real commands against the
controller served on loopback, over VMs whose agents are real processes (``AgentBackend``).

``hearth run``'s CLI in the VM is the replaying stand-in of ``test_api_runs`` (what a real CLI
printed); the real CLIs in a real VM are in ``tests/vm/test_runs.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.config import Settings
from tests.agent_backend import AgentBackend
from tests.integration.conftest import AgentLauncher
from tests.integration.run_lines import answer_lines, capture
from tests.integration.sdk_fixtures import Live, serving
from tests.integration.test_api_runs import ANSWER, fake_command, logged_in_vm, script


@pytest.fixture
async def live(
    agent_launcher: AgentLauncher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Live]:
    monkeypatch.setattr("hearth.control.runs.run_command", fake_command)
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})
    async with serving(settings, AgentBackend(agent_launcher), tmp_path) as served:
        yield served


async def spawn_hearth(live: Live, *args: str) -> asyncio.subprocess.Process:
    """``python -m hearth ARGS`` as ann, started, its three streams piped."""
    env = {**os.environ, "HEARTH_URL": live.url, "HEARTH_API_KEY": live.keys["ann"]}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hearth",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def hearth(live: Live, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """``python -m hearth ARGS`` as ann, to its end; its status, stdout and stderr."""
    process = await spawn_hearth(live, *args)
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_hearth_exec_passes_both_streams_and_the_commands_status(live: Live) -> None:
    vm_id, _ = await logged_in_vm(live.api, "ann", providers=())
    status, out, err = await hearth(
        live, "exec", vm_id, "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7"
    )
    assert (status, out, err) == (7, "to-out\n", "to-err\n")
    status, _, _ = await hearth(live, "exec", vm_id, "--timeout", "1", "--", "sleep", "30")
    assert status == 124
    status, _, _ = await hearth(live, "exec", vm_id, "--", "sh", "-c", "kill -TERM $$")
    assert status == 128 + 15
    status, _, err = await hearth(live, "exec", "vm-nope", "--", "true")
    assert status == 125
    assert "not_found" in err


async def test_hearth_run_streams_the_answer_and_exits_with_the_runs_status(live: Live) -> None:
    vm_id, _ = await logged_in_vm(live.api, "ann")
    status, out, err = await hearth(
        live, "run", vm_id, "--provider", "claude_code", script(answer_lines("claude_code"))
    )
    assert status == 0, err
    assert out.strip() == ANSWER
    assert "completed" in err
    failed = capture("claude_code", "rate_limited")
    prompt = script(failed.lines, exit=failed.exit_code, stderr=failed.stderr)
    status, _, err = await hearth(
        live, "run", vm_id, "--provider", "claude_code", "-", stdin=prompt.encode()
    )
    assert status == 1
    assert "rate_limited" in err
    status, out, _ = await hearth(
        live,
        "run",
        vm_id,
        "--provider",
        "claude_code",
        "--json",
        script(answer_lines("claude_code")),
    )
    events = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.completed"
    status, _, err = await hearth(live, "run", vm_id, "--provider", "codex", "hi")
    assert status == 125
    assert "not_logged_in" in err
