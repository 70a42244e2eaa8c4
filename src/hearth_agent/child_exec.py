"""Running a program on a terminal as a fresh exec would, not as this interpreter left itself.

Python's start changes its own process: SIGPIPE and SIGXFSZ are ignored, and in a C locale
LC_CTYPE is coerced to C.UTF-8 in the environment. An ignored signal stays ignored across
``exec``, and a child forked from the agent inherits both, so a program started that way would
not die of a broken pipe (``yes | head`` runs on) and would see a locale nobody gave it.

``Popen`` restores those signals itself (``restore_signals``) but cannot take a terminal, and a
child forked from the agent must do no more than ``exec`` (the agent runs threads, so ``preexec_fn``
or Python code after ``pty.fork`` is unsafe). So every program the agent starts on a terminal (a
terminal exec, a vendor CLI's login) goes through one trampoline instead: a new ``-I -S``
interpreter that puts the dispositions and ``LC_CTYPE`` back, takes the terminal on its stdin as its
controlling terminal (already so after ``pty.fork``, where the call changes nothing) and ``exec``s
the program in the same process. A program that cannot be run ends it with 127 and a line on the
terminal, as in a shell.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

# argv[1] is "=" and the caller's LC_CTYPE, or "-" for none; argv[2:] is the program.
_TRAMPOLINE = """\
import fcntl, os, signal, sys, termios
for number in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(number, signal.SIG_DFL)
if sys.argv[1].startswith("="):
    os.environ["LC_CTYPE"] = sys.argv[1][1:]
else:
    os.environ.pop("LC_CTYPE", None)
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    os.write(2, f"{sys.argv[2]}: {exc.strerror}\\r\\n".encode(errors="replace"))
    os._exit(127)
"""


def terminal_program_argv(cmd: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The command line that runs ``cmd`` on the terminal at its stdin, with default SIGPIPE and
    SIGXFSZ and exactly ``env``'s LC_CTYPE; to be started (or exec'd) with ``env``."""
    lc_ctype = "=" + env["LC_CTYPE"] if "LC_CTYPE" in env else "-"
    return [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, lc_ctype, *cmd]
