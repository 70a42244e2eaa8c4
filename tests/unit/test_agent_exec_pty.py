"""Execs on a pseudo-terminal, with real processes: a terminal for stdin/stdout/stderr, its size
and SIGWINCH, input and end-of-file, and nothing of its session left after kill, timeout or
the shell's own end (a shell's jobs run in process groups of their own)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth_agent.errors import ExecStartFailed, InvalidInput, NotATerminal
from hearth_agent.exec_events import EventType, payload_bytes
from hearth_agent.exec_pty import PtySize, signal_session
from hearth_agent.exec_routes import parse_exec_spec
from hearth_agent.execs import Exec, ExecRegistry, ExecSpec, ExitInfo
from tests.unit.test_agent_execs import WAIT_S, collect, make_registry, process_gone, wait_until

PYTHON = sys.executable
SIZE = PtySize(cols=80, rows=24)


class Screen:
    """Reads a terminal exec's output as it comes (each read acknowledges what it got)."""

    def __init__(self, running: Exec) -> None:
        self.running = running
        self.text = ""
        self.exit: dict[str, object] | None = None
        self._after = 0

    def wait_for(self, needle: str, timeout_s: float = WAIT_S) -> str:
        """Read until ``needle`` is in the output; the output so far."""
        deadline = time.monotonic() + timeout_s
        while needle not in self.text:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.exit is not None:
                pytest.fail(f"{needle!r} never came; the terminal showed {self.text!r}")
            for event in self.running.log.read(self._after, wait_s=min(remaining, 0.5)):
                self._after = event.id
                if event.type is EventType.EXIT:
                    self.exit = event.payload
                else:
                    assert event.type is EventType.STDOUT
                    self.text += payload_bytes(event.payload).decode(errors="replace")
        return self.text


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ExecRegistry]:
    """A registry; afterwards, no exec's group is left running."""
    execs = make_registry(tmp_path)
    try:
        yield execs
    finally:
        execs.close()
        assert execs.running() == []


def on_pty(*cmd: str, size: PtySize = SIZE, **options: object) -> ExecSpec:
    """``cmd`` on a terminal of ``size``."""
    return ExecSpec(cmd=cmd, pty=size, **options)  # type: ignore[arg-type]


def ended(running: Exec) -> ExitInfo:
    """How the exec ended, waiting for it."""
    exit_info = running.wait(WAIT_S)
    assert exit_info is not None, "the exec did not end"
    return exit_info


def session_of(pid: int) -> int:
    """The session id of a live process."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[3])


# --- a terminal -----------------------------------------------------------------------------


def test_output_of_a_command_on_a_terminal_arrives_as_stdout_with_crlf(
    registry: ExecRegistry,
) -> None:
    out = collect(registry.start(on_pty("sh", "-c", "echo out; echo err >&2; exit 3")))

    assert out.stdout == b"out\r\nerr\r\n"  # one stream, the terminal's newline translation
    assert out.stderr == b""
    assert out.exit["code"] == 3
    assert out.exit["reason"] == "exited"


def test_stdin_stdout_and_stderr_are_the_controlling_terminal(registry: ExecRegistry) -> None:
    script = (
        "import os, sys\n"
        "print([os.isatty(fd) for fd in (0, 1, 2)])\n"
        "print(os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp())\n"
        "print(os.environ['TERM'])\n"
        "with open('/dev/tty', 'w') as tty:\n"  # only a process with a controlling terminal can
        "    tty.write('via /dev/tty\\n')\n"
    )
    out = collect(registry.start(on_pty(PYTHON, "-c", script)))

    assert out.stdout.decode().splitlines() == [
        "[True, True, True]",
        "True True",  # the session's leader, and the terminal's foreground group
        "xterm-256color",
        "via /dev/tty",
    ]
    assert out.exit["code"] == 0


def test_the_callers_term_wins_over_the_default(registry: ExecRegistry) -> None:
    out = collect(registry.start(on_pty("sh", "-c", "echo $TERM", env={"TERM": "vt100"})))

    assert out.stdout == b"vt100\r\n"


def test_the_terminal_starts_with_the_size_asked_for(registry: ExecRegistry) -> None:
    out = collect(registry.start(on_pty("stty", "size", size=PtySize(cols=132, rows=43))))

    assert out.stdout == b"43 132\r\n"


def test_resize_changes_stty_size_and_signals_sigwinch(registry: ExecRegistry) -> None:
    script = (
        "import os, signal, sys\n"
        # os.write: a handler that prints could interrupt a print of the main code.
        "signal.signal(signal.SIGWINCH, lambda *_: os.write(1, b'winch\\n'))\n"
        "print('size', *os.get_terminal_size(0), flush=True)\n"
        "sys.stdin.readline()\n"
        "print('size', *os.get_terminal_size(0), flush=True)\n"
    )
    running = registry.start(on_pty(PYTHON, "-c", script))
    screen = Screen(running)
    screen.wait_for("size 80 24")

    running.resize(PtySize(cols=100, rows=40))
    screen.wait_for("winch")
    running.write_stdin(b"\r")

    assert "size 100 40" in screen.wait_for("size 100 40")
    assert running.view()["pty"] == {"cols": 100, "rows": 40}
    assert ended(running).code == 0


def test_an_interactive_shell_reads_the_terminal_and_follows_its_size(
    registry: ExecRegistry,
) -> None:
    running = registry.start(on_pty("bash", "--norc", "-i"))
    screen = Screen(running)
    running.write_stdin(b"echo $((6 * 7))\r")
    screen.wait_for("42")

    running.resize(PtySize(cols=123, rows=45))
    running.write_stdin(b"stty size\r")
    screen.wait_for("45 123")

    running.write_stdin(b"exit 4\r")
    assert ended(running).code == 4


def test_eof_on_a_terminal_is_its_end_of_file_character(registry: ExecRegistry) -> None:
    running = registry.start(on_pty("cat"))
    screen = Screen(running)
    running.write_stdin(b"typed\r")
    screen.wait_for("typed\r\ntyped\r\n")  # the terminal's echo, then cat's copy

    running.write_stdin(b"", eof=True)

    assert ended(running).code == 0


def test_eof_after_an_unfinished_line_ends_the_input(registry: ExecRegistry) -> None:
    # On a terminal one end-of-file key after "hello" only hands "hello" to the reader.
    running = registry.start(on_pty("cat"))
    screen = Screen(running)
    running.write_stdin(b"hel")
    running.write_stdin(b"lo", eof=True)

    assert ended(running).code == 0
    assert screen.wait_for("hellohello")


def test_stdin_given_at_start_is_typed_into_the_terminal(registry: ExecRegistry) -> None:
    running = registry.start(on_pty("sh", "-c", "read line; echo got $line", stdin=b"abc\r"))

    assert Screen(running).wait_for("got abc")


def test_the_command_gets_the_signal_dispositions_and_locale_a_pipe_exec_gets(
    registry: ExecRegistry,
) -> None:
    # The trampoline's interpreter ignores SIGPIPE and SIGXFSZ and coerces LC_CTYPE to C.UTF-8;
    # none of that may reach the command.
    show = "grep SigIgn /proc/self/status; env | grep ^LC_ || true; yes | head -1"
    for env in ({"LANG": "C"}, {"LANG": "C", "LC_CTYPE": "C"}):
        on_pipes = collect(registry.start(ExecSpec(cmd=("sh", "-c", show), env=env)))
        terminal = Screen(registry.start(on_pty("sh", "-c", show, env=env)))
        terminal.wait_for("y\r\n")
        expected = on_pipes.stdout.decode().replace("\n", "\r\n")
        assert on_pipes.stdout.startswith(b"SigIgn:\t0000000000000000\n")
        assert ended(terminal.running).code == 0
        assert terminal.wait_for(expected) == expected


# --- nothing of its session outlives it -----------------------------------------------------

# A job in a process group of its own, as an interactive shell starts each job: it prints its
# pid, then sleeps, ignoring the signals a terminal hang-up sends.
_JOB_IN_ITS_OWN_GROUP = (
    "import os, signal, subprocess, sys, time\n"
    "job = subprocess.Popen(['sleep', '300'], process_group=0,\n"
    "    preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN) for s in (1, 15)])\n"
    "print('job', job.pid, flush=True)\n"
    "{after}\n"
)


def job_pid(screen: Screen) -> int:
    """The pid the script above printed."""
    text = screen.wait_for("job ")
    return int(text.split("job ", 1)[1].split()[0])


def test_kill_ends_every_process_of_the_terminals_session(registry: ExecRegistry) -> None:
    script = _JOB_IN_ITS_OWN_GROUP.format(after="time.sleep(300)")
    running = registry.start(on_pty(PYTHON, "-c", script))
    job = job_pid(Screen(running))
    assert session_of(job) == running.pid
    assert os.getpgid(job) != running.pid  # out of reach of a kill of the leader's group

    assert running.kill() is True

    exit_info = ended(running)
    assert exit_info.reason == "killed"
    assert exit_info.signal == "SIGKILL"
    assert wait_until(lambda: process_gone(job), 2.0)
    assert process_gone(running.pid)


def test_a_timeout_ends_every_process_of_the_terminals_session(registry: ExecRegistry) -> None:
    script = _JOB_IN_ITS_OWN_GROUP.format(after="time.sleep(300)")
    running = registry.start(on_pty(PYTHON, "-c", script, timeout_s=2.0))
    job = job_pid(Screen(running))

    assert ended(running).reason == "timeout"
    assert wait_until(lambda: process_gone(job), 2.0)


def test_jobs_the_shell_leaves_behind_end_with_it(registry: ExecRegistry) -> None:
    script = _JOB_IN_ITS_OWN_GROUP.format(after="")  # the leader exits at once
    started = time.monotonic()
    running = registry.start(on_pty(PYTHON, "-c", script))
    job = job_pid(Screen(running))

    ended(running)
    assert wait_until(lambda: process_gone(job), 2.0)
    assert time.monotonic() - started < 5.0


def test_a_shells_background_job_ends_with_the_killed_shell(registry: ExecRegistry) -> None:
    running = registry.start(on_pty("bash", "--norc", "-i"))
    screen = Screen(running)
    running.write_stdin(b"sleep 300 & echo jo''b $!\r")  # quoted: the echo of it is no match
    job = job_pid(screen)
    assert os.getpgid(job) == job  # job control: the job leads a group of its own

    running.kill()

    ended(running)
    assert wait_until(lambda: process_gone(job), 2.0)


def test_signal_session_signals_each_member_once(registry: ExecRegistry) -> None:
    script = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, lambda *_: os.write(1, b'int\\n'))\n"
        "print('up', flush=True)\n"
        "time.sleep(1)\n"
    )
    running = registry.start(on_pty(PYTHON, "-c", script))
    screen = Screen(running)
    screen.wait_for("up")

    assert signal_session(running.pid, signal.SIGINT) == 1
    screen.wait_for("int")
    assert ended(running).code == 0
    assert screen.text.count("int") == 1


# --- refusals -------------------------------------------------------------------------------


def test_a_missing_program_is_refused_before_anything_runs(registry: ExecRegistry) -> None:
    with pytest.raises(ExecStartFailed, match="no-such-program"):
        registry.start(on_pty("no-such-program-anywhere"))
    assert registry.running() == []


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("/no/such/program", "No such file or directory"),
        ("./not-executable", "Permission denied"),
        ("/", "Permission denied"),
    ],
)
def test_a_program_path_that_cannot_run_is_refused_as_on_pipes(
    registry: ExecRegistry, program: str, reason: str
) -> None:
    (registry.workspace / "not-executable").write_text("echo hello\n")  # mode 0644
    for spec in (ExecSpec(cmd=(program,)), on_pty(program)):
        with pytest.raises(ExecStartFailed, match=reason):
            registry.start(spec)
    assert registry.running() == []


def test_a_program_the_kernel_cannot_run_ends_the_terminal_with_127(
    registry: ExecRegistry,
) -> None:
    script = registry.workspace / "no-interpreter"
    script.write_text("echo hello\n")
    script.chmod(0o755)  # executable, but with no #! line: execve says ENOEXEC
    screen = Screen(registry.start(on_pty("./no-interpreter")))

    assert ended(screen.running).code == 127
    assert "./no-interpreter: Exec format error" in screen.wait_for("\r\n")


def test_resize_needs_a_terminal(registry: ExecRegistry) -> None:
    running = registry.start(ExecSpec(cmd=("true",)))
    with pytest.raises(NotATerminal):
        running.resize(SIZE)


@pytest.mark.parametrize(
    "pty",
    [
        {"cols": 0, "rows": 24},
        {"cols": 80, "rows": 1001},
        {"cols": 80},
        {"cols": 80, "rows": 24, "extra": 1},
        {"cols": "80", "rows": 24},
        {"cols": True, "rows": 24},
        [80, 24],
    ],
)
def test_a_bad_terminal_size_is_refused(pty: object) -> None:
    with pytest.raises(InvalidInput, match=r"pty|cols|rows"):
        parse_exec_spec({"cmd": ["sh"], "pty": pty})


def test_the_exec_body_takes_a_terminal_size() -> None:
    spec = parse_exec_spec({"cmd": ["bash", "-l"], "pty": {"cols": 120, "rows": 30}})

    assert spec.pty == PtySize(cols=120, rows=30)
    assert parse_exec_spec({"cmd": ["true"]}).pty is None
