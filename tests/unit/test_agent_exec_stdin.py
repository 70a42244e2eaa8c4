"""An exec's stdin writer with real processes: it lets go when its exec ends, even while a
process that left the exec's session holds stdin open and never reads it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from hearth_agent.exec_pty import PtySize
from hearth_agent.execs import ExecSpec
from tests.unit.test_agent_execs import WAIT_S, make_registry, wait_until

# The leader starts a daemon in a session of its own (so the agent cannot kill it with the exec)
# that keeps stdin open without reading it, and ends once the daemon has left its session.
_DAEMON = "import os, time; os.setsid(); open('away', 'w').close(); time.sleep(60)"
# (fd 3: sh gives a background command /dev/null for stdin, before its own redirections.)
HOLD_STDIN = (
    f'exec 3<&0; {sys.executable} -c "{_DAEMON}" <&3 3<&- & echo $! > holder.pid; '
    "while [ ! -e away ]; do sleep 0.05; done"
)


@pytest.mark.parametrize("pty", [None, PtySize(cols=80, rows=24)], ids=["pipe", "pty"])
def test_the_stdin_writer_ends_with_its_exec_while_a_process_holds_stdin_unread(
    tmp_path: Path, pty: PtySize | None
) -> None:
    # Lines, so that a terminal in canonical mode queues them rather than discarding the excess.
    backlog = b"y" * 1023 + b"\n"
    spec = ExecSpec(cmd=("sh", "-c", HOLD_STDIN), stdin=backlog * 1024, stdin_open=True, pty=pty)
    registry = make_registry(tmp_path)
    running = registry.start(spec)
    writer = f"exec-{running.exec_id}-stdin"
    holder = registry.workspace / "holder.pid"
    try:
        assert running.wait(WAIT_S) is not None, "the exec never ended"
        # 1 MiB cannot fit in the pipe or the terminal: the writer was stuck when the exec ended.
        assert wait_until(lambda: writer not in {t.name for t in threading.enumerate()}, 2.0), (
            "the stdin writer outlived its exec, holding the pipe and the backlog"
        )
    finally:
        registry.close()
        if holder.exists():
            os.kill(int(holder.read_text()), signal.SIGKILL)
