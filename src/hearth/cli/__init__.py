"""The ``hearth`` command line: serve, image, vm, exec, files, run, terminal, keys, auth, bench,
doctor.

A command's module is imported only when that command runs (or when a help lists every command):
the API's clients (``vm``, ``exec``, ``files``, ``run``, ``auth``, ``terminal``) then start without
the server's FastAPI, SQLAlchemy and Alembic, about 4 s of imports on a CI machine.
"""

from __future__ import annotations

import functools
import importlib

import typer
import typer.main
from typer import _click
from typer.core import TyperGroup

# Each command by name: the module that defines it and the Typer app or function it is there, in
# the order ``hearth --help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("hearth.cli.server", "serve"),
    "doctor": ("hearth.cli.doctor", "doctor"),
    "exec": ("hearth.cli.exec", "exec_command"),
    "run": ("hearth.cli.run", "run_command"),
    "terminal": ("hearth.cli.terminal", "terminal_command"),
    "image": ("hearth.cli.images", "image_app"),
    "vm": ("hearth.cli.vms", "vm_app"),
    "keys": ("hearth.cli.server", "keys_app"),
    "auth": ("hearth.cli.auth", "auth_app"),
    "files": ("hearth.cli.files", "files_app"),
    "bench": ("hearth.bench.cli", "bench_app"),
}


@functools.cache
def load_command(name: str) -> _click.Command:
    """The click command ``name`` (one of ``COMMANDS``), its module imported on first use."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    command: _click.Command
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)  # a group even with one command (auth login)
    else:
        single = typer.Typer(add_completion=False)  # completion is the root's option only
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommands(TyperGroup):
    """The root group: lists ``COMMANDS`` and loads one only when it is asked for."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        """Every command's name, without importing any."""
        return list(COMMANDS)

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        """The command ``cmd_name``, loaded now; None for a name that is no command."""
        return load_command(cmd_name) if cmd_name in COMMANDS else None


app = typer.Typer(
    cls=LazyCommands,
    help="Hearth: isolated microVMs for AI coding CLIs.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    # The root takes no options of its own; a callback makes Typer build a group (LazyCommands)
    # even though no command is registered on it here.
    pass


def main() -> None:
    """Entry point for ``python -m hearth``."""
    app(prog_name="hearth")


__all__ = ["COMMANDS", "app", "main"]
