"""``hearth exec`` and ``hearth run`` as a user runs them: the real commands against the
controller served on loopback, over VMs whose agents are real processes (``AgentBackend``).

``hearth run``'s CLI in the VM is the replaying stand-in of ``test_api_runs`` (what a real CLI
printed); the real CLIs in a real VM are in ``tests/vm/test_runs.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearth.cli import app
from hearth.config import Settings
from hearth.sdk import ExecEvent, Vm
from tests.agent_backend import AgentBackend
from tests.integration.conftest import AgentLauncher
from tests.integration.run_lines import answer_lines, capture
from tests.integration.sdk_fixtures import Live, serving
from tests.integration.test_api_runs import ANSWER, alive, fake_command, logged_in_vm, script

DEADLINE_S = 60.0


@pytest.fixture
async def live(
    agent_launcher: AgentLauncher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Live]:
    monkeypatch.setattr("hearth.control.runs.run_command", fake_command)
    settings = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path / "state")})
    async with serving(settings, AgentBackend(agent_launcher), tmp_path) as served:
        yield served


async def spawn_hearth(
    live: Live, *args: str, stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """``python -m hearth ARGS`` as ann, started, its three streams piped (stdout to the file
    descriptor ``stdout`` when given)."""
    env = {**os.environ, "HEARTH_URL": live.url, "HEARTH_API_KEY": live.keys["ann"]}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hearth",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=stdout,
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


async def interrupted(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Ctrl-C to ``process`` (SIGINT, as a terminal sends it); its status, stdout and stderr."""
    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (waiting a little for it)."""
    for _ in range(100):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_ctrl_c_on_hearth_exec_kills_the_command_in_the_vm(live: Live) -> None:
    vm_id, _ = await logged_in_vm(live.api, "ann", providers=())
    command = await spawn_hearth(live, "exec", vm_id, "--", "sh", "-c", "echo $$; exec sleep 300")
    assert command.stdout is not None
    pid = int(await asyncio.wait_for(command.stdout.readline(), DEADLINE_S))
    assert alive(pid)

    status, _, err = await interrupted(command)

    assert status == 130, err
    assert "killed command" in err
    assert await gone(pid), "the command outlived hearth exec's Ctrl-C"


async def test_ctrl_c_on_hearth_run_shows_every_event_to_the_cancelled_end(live: Live) -> None:
    vm_id, _ = await logged_in_vm(live.api, "ann")
    # Up to the first text, then the CLI hangs until the run is cancelled.
    prompt = script(answer_lines("claude_code")[:5], hang=True)
    args = ("run", vm_id, "--provider", "claude_code")
    as_json = await spawn_hearth(live, *args, "--json", prompt)
    assert as_json.stdout is not None
    seen: list[bytes] = []
    while b"message.delta" not in (seen or [b""])[-1]:
        seen.append(await asyncio.wait_for(as_json.stdout.readline(), DEADLINE_S))
    status, out, err = await interrupted(as_json)
    assert status == 130, err
    events = [json.loads(line) for line in [*seen, *out.encode().splitlines()]]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert (events[-1]["type"], events[-1]["data"].get("code")) == ("run.failed", "cancelled")

    as_text = await spawn_hearth(live, *args, prompt)
    assert as_text.stdout is not None
    assert await asyncio.wait_for(as_text.stdout.readexactly(6), DEADLINE_S) == b"Hello "
    status, _, err = await interrupted(as_text)
    assert status == 130, err
    assert "failed (cancelled)" in err


async def test_hearth_exec_whose_start_lost_its_answer_exits_255_not_125(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command ran; only the answer to the request that started it was cut off. 125 would
    # tell a wrapper it never ran and may be run again.
    vm_id, _ = await logged_in_vm(live.api, "ann", providers=())
    exec_stream = Vm.exec_stream

    def cut_answer(vm: Vm, cmd: list[str], **options: Any) -> Iterator[ExecEvent]:
        live.proxy.cut_after(0)  # the next answer through the proxy: the POST's
        return exec_stream(vm, cmd, **options)

    monkeypatch.setattr(Vm, "exec_stream", cut_answer)
    env = {"HEARTH_URL": live.proxy_url, "HEARTH_API_KEY": live.keys["ann"]}
    marker = tmp_path / "ran"
    cmd = ["exec", vm_id, "--", "sh", "-c", f"echo ran > {marker}"]
    # In process, on a thread: the controller and the proxy run on this test's loop.
    result = await asyncio.to_thread(CliRunner().invoke, app, cmd, env=env)

    assert result.exit_code == 255, result.output
    assert "outcome_unknown" in result.output
    assert live.proxy.cuts_done == 1
    assert marker.read_text() == "ran\n"


async def test_hearth_exec_whose_reader_goes_away_kills_the_command_and_exits_141(
    live: Live, tmp_path: Path
) -> None:
    # `hearth exec VM -- producer | head -1`: once head has its line, nothing reads the output;
    # the command must not run on in the VM, and hearth ends as a writer SIGPIPE ended would.
    vm_id, _ = await logged_in_vm(live.api, "ann", providers=())
    pidfile = tmp_path / "pid"
    producer = f"echo $$ > {pidfile}; while :; do echo y; sleep 0.01; done"
    read_end, write_end = os.pipe()
    command = await spawn_hearth(live, "exec", vm_id, "--", "sh", "-c", producer, stdout=write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as head:  # head reads its line, then exits
        assert await asyncio.wait_for(asyncio.to_thread(head.readline), DEADLINE_S) == b"y\n"
    pid = int(pidfile.read_text())

    _, err = await asyncio.wait_for(command.communicate(), DEADLINE_S)

    assert command.returncode == 141, err
    assert err == b""  # no traceback, no "Exception ignored"
    assert await gone(pid), "the command outlived its reader"


async def test_hearth_run_whose_reader_goes_away_cancels_the_run_and_exits_141(live: Live) -> None:
    # `hearth run … --json | head -1`: once head has its line nothing reads the answer; the run
    # must not go on in the VM, and hearth ends as a writer SIGPIPE ended would.
    vm_id, headers = await logged_in_vm(live.api, "ann")
    prompt = script(answer_lines("claude_code"), pause_s=0.3, hang=True)
    read_end, write_end = os.pipe()
    command = await spawn_hearth(
        live, "run", vm_id, "--provider", "claude_code", "--json", prompt, stdout=write_end
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as head:  # head reads its line, then exits
        first = await asyncio.wait_for(asyncio.to_thread(head.readline), DEADLINE_S)
    assert json.loads(first)["type"] == "run.started"

    _, err = await asyncio.wait_for(command.communicate(), DEADLINE_S)

    assert command.returncode == 141, err
    assert err == b""  # no traceback, no "Exception ignored"
    runs = (await live.api.client.get(f"/api/vms/{vm_id}/runs", headers=headers)).json()
    assert [(run["status"], (run["failure"] or {}).get("code")) for run in runs["runs"]] == [
        ("failed", "cancelled")
    ]
