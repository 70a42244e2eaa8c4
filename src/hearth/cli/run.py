"""``hearth run VM --provider P "prompt"``: a vendor CLI's headless run, its answer here.

The answer's text goes to stdout as it streams (so it pipes); tools, usage and how the run ended
go to stderr through Rich. The exit status is the run's: 0 completed, 124 timed out, 130
cancelled (Ctrl-C cancels the run in the VM, and the events up to its end are still shown), 1 any
other failure (its code and message shown), 125 when the run could not start, 255 when it
started, or may have, but its end was not seen. ``--json`` prints every event as one JSON line
instead.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated, Any

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
from hearth.sdk import Hearth, HearthSdkError, RunEvent, Vm
from hearth_agent.wire import Provider

EXIT_FAILED = 1


def run_status(final: RunEvent) -> int:
    """The exit status for a run's last event."""
    if final.type == "run.completed":
        return 0
    code = final.data.get("code")
    if code == "timeout":
        return EXIT_TIMEOUT
    if code == "cancelled":
        return EXIT_CANCELLED
    return EXIT_FAILED


def _show(event: RunEvent, *, as_json: bool) -> None:
    if as_json:
        line = {"id": event.id, "type": event.type, "data": event.data}
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        return
    data: dict[str, Any] = event.data
    if event.type == "message.delta":
        sys.stdout.write(str(data.get("text", "")))
        sys.stdout.flush()
    elif event.type == "tool.started":
        err_console.print(f"[cyan]⚙ {escape(str(data.get('name')))}[/cyan]")
    elif event.type == "tool.finished" and data.get("isError"):
        err_console.print(f"[yellow]⚙ {escape(str(data.get('name')))} failed[/yellow]")
    elif event.type == "run.completed":
        sys.stdout.write("\n")
        usage = data.get("usage") or {}
        shown = ", ".join(f"{k} {v}" for k, v in usage.items() if isinstance(v, int))
        err_console.print(f"[green]completed[/green] {escape(shown)}")
        if data.get("sessionId"):
            err_console.print(f"session {escape(str(data['sessionId']))} (--resume continues it)")
    elif event.type == "run.failed":
        message = escape(str(data.get("message", "")))
        err_console.print(f"[red]failed[/red] ({escape(str(data.get('code')))}): {message}")


class _Shown:
    """The events shown so far: the last one's id (to go on after it) and the run's end."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.last_id = 0
        self.final: RunEvent | None = None

    def show_from(self, vm: Vm, run_id: str) -> None:
        """Show the run's events after the last one shown, to its end."""
        for event in vm.run_events(run_id, after=self.last_id):
            _show(event, as_json=self.as_json)
            self.last_id = event.id if event.id is not None else self.last_id
            self.final = event if event.terminal else self.final


def _follow(vm: Vm, run_id: str, *, as_json: bool) -> int:
    shown = _Shown(as_json=as_json)
    try:
        shown.show_from(vm, run_id)
    except KeyboardInterrupt:
        if shown.final is None:  # else it had ended just before
            vm.cancel_run(run_id)
            err_console.print(f"cancelling run {escape(run_id)}…")
            shown.show_from(vm, run_id)  # what came meanwhile, to its end (``cancelled``)
    except BrokenPipeError:
        # The answer's reader went away (``hearth run … | head``): the run is cancelled, as
        # Ctrl-C would, and this ends quietly as a writer SIGPIPE ended (141).
        return output_closed_stopping(
            functools.partial(vm.cancel_run, run_id) if shown.final is None else None
        )
    if shown.final is None:
        raise HearthSdkError("the run's events ended before the run did")
    return run_status(shown.final)


def run_command(
    vm_id: Annotated[str, typer.Argument(help="the CLI VM (its login for the provider in it)")],
    prompt: Annotated[str, typer.Argument(help="the prompt; - reads it from stdin")],
    provider: Annotated[Provider, typer.Option(help="whose CLI runs")],
    model: Annotated[str | None, typer.Option(help="the CLI's model name")] = None,
    resume: Annotated[
        str | None, typer.Option(help="a previous run's session id: continue that conversation")
    ] = None,
    cwd: CwdOption = None,
    timeout: Annotated[float | None, typer.Option(help="seconds before the run fails")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="every event as a JSON line")] = False,
) -> None:
    """Run a vendor CLI on a prompt in a CLI VM; its answer here, the run's status as exit."""
    text = sys.stdin.read() if prompt == "-" else prompt
    with ending_on_errors(code=EXIT_NOT_STARTED):
        api = ApiClient()
        client = Hearth(api.url, api.key)
    with client:
        with ending_on_errors(code=EXIT_NOT_STARTED, unknown=EXIT_LOST):
            vm = client.vms.get(vm_id)
            run = vm.start_run(
                provider.value, text, model=model, resume=resume, cwd=cwd, timeout_s=timeout
            )
        if not as_json:
            err_console.print(f"run {escape(run.id)} ({provider.value}) started")
        with ending_on_errors(code=EXIT_LOST):
            status = _follow(vm, run.id, as_json=as_json)
    raise typer.Exit(status)
