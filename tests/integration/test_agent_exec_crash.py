"""Execs across a crash of the agent, on real subprocesses: the agent that starts next ends what
the crashed one's execs left running, so nothing runs on past its timeout or outside the cap."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from tests.integration.test_agent_exec import process_gone, read_events, start, stop_and_prove_clean

if TYPE_CHECKING:
    from conftest import AgentLauncher


def test_an_agent_restarted_after_a_crash_kills_what_the_crashed_ones_execs_left(
    agent_launcher: AgentLauncher,
) -> None:
    token = agent_launcher.write_token()
    args = ("--token-file", str(agent_launcher.token_file), "--max-execs", "1")
    crashed = agent_launcher.start(*args, token=token)
    with crashed.client(token) as client:
        exec_id = start(client, cmd=["bash", "-c", "sleep 300 & echo $!; wait"], timeout_s=300)
        child = int(read_events(client, exec_id, limit=1).stream("stdout"))
        leader = client.get(f"/exec/{exec_id}").json()["pid"]
    try:
        os.kill(crashed.pid, signal.SIGKILL)  # the OOM killer, a bug: no shutdown runs
        crashed.process.wait()
        assert not process_gone(leader), "the exec should outlive its agent's crash"

        restarted = agent_launcher.start(*args, token=token)  # as init or systemd respawns it

        deadline = time.monotonic() + 5.0
        while not (process_gone(leader) and process_gone(child)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_gone(leader), "the crashed agent's exec runs on under the new agent"
        assert process_gone(child), "what the crashed agent's exec started runs on"
        assert [
            r["processes"]
            for r in restarted.log_records()
            if r["event"] == "left_over_execs_killed"
        ] == [2]
        with restarted.client(token) as client:  # the cap counts only what this agent runs
            assert client.post("/exec", json={"cmd": ["true"]}).status_code == 201
        stop_and_prove_clean(restarted)
    finally:
        for pid in (leader, child):
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
