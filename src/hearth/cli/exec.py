"""``hearth exec VM -- cmd…``: run a command in a CLI VM, its output on this terminal.

stdout and stderr go to this process's own, byte for byte; the exit status is the command's
(128 + the signal's number when a signal ended it, 124 when its timeout did, like ``timeout``).
A stream that breaks off is picked up again after the last event received (``Last-Event-ID``):
the command runs under the VM's agent and loses nothing meanwhile.
"""

from __future__ import annotations

import base64
import signal
import sys
import time
from typing import Annotated, Any

import typer

from hearth.cli.client import ApiClient, ApiError
from hearth.cli.common import fail
from hearth.errors import HearthError, InvalidInput

# How often a broken stream is picked up again before the command gives up.
RESUME_ATTEMPTS = 5
EXIT_TIMEOUT = 124


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def _write(data: dict[str, Any], stream: Any) -> None:
    chunk = data.get("data", "")
    raw = base64.b64decode(chunk) if data.get("encoding") == "base64" else chunk.encode()
    stream.buffer.write(raw)
    stream.buffer.flush()


def exit_status(ended: dict[str, Any]) -> int:
    """The shell's exit status for how the command ended."""
    if ended.get("reason") == "timeout":
        return EXIT_TIMEOUT
    if ended.get("signal"):
        try:
            return 128 + int(signal.Signals[ended["signal"]])
        except KeyError:
            return 128
    code = ended.get("code")
    return int(code) if code is not None else 1


def _follow(client: ApiClient, vm_id: str, body: dict[str, Any]) -> int:
    """Stream the command's output; its exit status."""
    path = f"/api/vms/{vm_id}/exec"
    exec_id: str | None = None
    last_id: int | None = None
    for attempt in range(RESUME_ATTEMPTS + 1):
        if exec_id is None:
            events = client.events("POST", path, json=body)
        else:
            events = client.events("GET", f"{path}/{exec_id}/events", last_event_id=last_id)
        try:
            for event_id, event, data in events:
                if event == "started":
                    exec_id = str(data["execId"])
                elif event in ("stdout", "stderr"):
                    _write(data, sys.stdout if event == "stdout" else sys.stderr)
                elif event == "exit":
                    return exit_status(data)
                elif event == "error":
                    raise ApiError(502, str(data.get("code")), str(data.get("message")))
                if event_id is not None:
                    last_id = event_id
        except ApiError as exc:
            if exc.code != "stream_broken" or exec_id is None or attempt == RESUME_ATTEMPTS:
                raise
            time.sleep(min(2.0**attempt, 10.0))
            continue
        if exec_id is None:
            break
    raise ApiError(502, "stream_broken", "the event stream ended before the command did")


def exec_command(
    vm_id: Annotated[str, typer.Argument(help="the CLI VM")],
    cmd: Annotated[list[str], typer.Argument(help="the command and its arguments (after --)")],
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE, repeatable")
    ] = None,
    cwd: Annotated[
        str | None, typer.Option(help="directory in the VM (default: workspace)")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds before the whole process group is killed")
    ] = None,
) -> None:
    """Run a command in a CLI VM; its output here, its exit status as this command's."""
    try:
        body: dict[str, Any] = {"cmd": cmd}
        if env:
            body["env"] = _env(env)
        if cwd is not None:
            body["cwd"] = cwd
        if timeout is not None:
            body["timeoutS"] = timeout
        status = _follow(ApiClient(), vm_id, body)
    except HearthError as exc:
        fail(exc, code=125)
    raise typer.Exit(status)
