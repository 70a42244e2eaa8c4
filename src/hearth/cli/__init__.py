"""The ``hearth`` command line: serve, image, vm, exec, files, run, terminal, keys, bench,
doctor."""

from __future__ import annotations

import typer

from hearth.bench.cli import bench_app
from hearth.cli.auth import auth_app
from hearth.cli.doctor import doctor
from hearth.cli.exec import exec_command
from hearth.cli.files import files_app
from hearth.cli.images import image_app
from hearth.cli.run import run_command
from hearth.cli.server import keys_app, serve
from hearth.cli.terminal import terminal_command
from hearth.cli.vms import vm_app

app = typer.Typer(help="Hearth: isolated microVMs for AI coding CLIs.", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(vm_app, name="vm")
app.add_typer(keys_app, name="keys")
app.add_typer(auth_app, name="auth")
app.add_typer(files_app, name="files")
app.add_typer(bench_app, name="bench")
app.command("serve")(serve)
app.command("doctor")(doctor)
app.command("exec")(exec_command)
app.command("run")(run_command)
app.command("terminal")(terminal_command)


def main() -> None:
    """Entry point for ``python -m hearth``."""
    app(prog_name="hearth")


__all__ = ["app", "main"]
