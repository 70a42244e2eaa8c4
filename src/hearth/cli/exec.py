"""``hearth exec VM -- cmd…``: run a command in a CLI VM, its output on this terminal.

stdout and stderr go to this process's own, byte for byte; the exit status is the command's
(128 + the signal's number when a signal ended it, 124 when its timeout did, like ``timeout``);
125 when it did not start, 255 when it started, or may have (the request went out, its answer
was lost), but its end was not seen. A stream that breaks off is picked up again after the last
event received (``Last-Event-ID``): the command runs under the VM's agent and loses nothing
meanwhile. Ctrl-C kills the command in the VM (its whole process group) and exits 130; so does
the reader of the output going away (``hearth exec … | head``), which exits 141, as SIGPIPE.
"""

from __future__ import annotations

import functools
import itertools
import signal
import sys
from typing import Annotated

import typer
from rich.markup import escape

from hearth.cli.client import ApiClient
from hearth.cli.common import (
    EXIT_CANCELLED,
    EXIT_LOST,
    EXIT_NOT_STARTED,
    EXIT_TIMEOUT,
    CwdOption,
    ending_on_errors,
    err_console,
    output_closed_stopping,
)
from hearth.errors import InvalidInput
from hearth.sdk import (
    ExecExit,
    ExecOutput,
    ExecStarted,
    Hearth,
    HearthConnectionError,
    Vm,
)
from hearth.sdk._exec import ExecOptions


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def exit_status(ended: ExecExit) -> int:
    """The shell's exit status for how the command ended."""
    if ended.reason == "timeout":
        return EXIT_TIMEOUT
    if ended.signal:
        try:
            return 128 + int(signal.Signals[ended.signal])
        except KeyError:
            return 128
    return ended.code if ended.code is not None else 1


def _follow(vm: Vm, cmd: list[str], options: ExecOptions) -> int:
    """Stream the command's output here; its exit status. The SDK picks a broken stream up
    again after the last event seen; an error once the command started, or may have, ends this
    with ``EXIT_LOST``, not "not started"."""
    events = vm.exec_stream(cmd, **options)
    exec_id: str | None = None
    try:
        with ending_on_errors(code=EXIT_NOT_STARTED, unknown=EXIT_LOST):
            first = next(events, None)  # ``started``: the command runs from here
        if isinstance(first, ExecStarted):
            exec_id = first.exec_id
        with ending_on_errors(code=EXIT_LOST):
            for event in itertools.chain([first] if first else [], events):
                if isinstance(event, ExecOutput):
                    stream = sys.stdout if event.stream == "stdout" else sys.stderr
                    stream.buffer.write(event.data)
                    stream.buffer.flush()
                elif isinstance(event, ExecExit):
                    return exit_status(event)
            raise HearthConnectionError(
                "stream_broken", "the event stream ended before the command"
            )
    except KeyboardInterrupt:
        return _interrupted(vm, exec_id)
    except BrokenPipeError:
        # The reader went away (``hearth exec … | head``): the command is killed, as Ctrl-C
        # would, and this ends quietly as a writer SIGPIPE ended (141).
        return output_closed_stopping(
            None if exec_id is None else functools.partial(vm.kill_exec, exec_id)
        )


def _interrupted(vm: Vm, exec_id: str | None) -> int:
    """Ctrl-C: kill the command in the VM, as ``hearth run`` cancels its run; 130."""
    if exec_id is None:
        err_console.print("interrupted before the command was seen to start: it may run on")
        return EXIT_CANCELLED
    with ending_on_errors(code=EXIT_LOST):
        signalled = vm.kill_exec(exec_id)
    shown = escape(exec_id)
    err_console.print(
        f"killed command {shown}" if signalled else f"command {shown} had ended already"
    )
    return EXIT_CANCELLED


def exec_command(
    vm_id: Annotated[str, typer.Argument(help="the CLI VM")],
    cmd: Annotated[list[str], typer.Argument(help="the command and its arguments (after --)")],
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE, repeatable")
    ] = None,
    cwd: CwdOption = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds before the whole process group is killed")
    ] = None,
) -> None:
    """Run a command in a CLI VM; its output here, its exit status as this command's."""
    with ending_on_errors(code=EXIT_NOT_STARTED, unknown=EXIT_LOST):
        options: ExecOptions = {"cwd": cwd, "timeout_s": timeout}
        if env:
            options["env"] = _env(env)
        api = ApiClient()
        with Hearth(api.url, api.key) as client:
            status = _follow(client.vms.get(vm_id), cmd, options)
    raise typer.Exit(status)
