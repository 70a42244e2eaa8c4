"""The ``hearth`` command line loads a command's module only when that command runs: the API's
clients start without the server's stack (FastAPI, SQLAlchemy, Alembic, uvicorn)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hearth.cli import COMMANDS, app
from tests.conftest import hearth_cli

SERVER_STACK = ("fastapi", "sqlalchemy", "alembic", "uvicorn")
# What imports the server stack because it is the server, or measures it.
NEEDS_THE_SERVER = {"serve", "keys", "doctor", "bench"}


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - NEEDS_THE_SERVER))
def test_a_client_command_runs_without_importing_the_server_stack(command: str) -> None:
    script = (
        "import sys\n"
        "from hearth.cli import main\n"
        f"sys.argv = ['hearth', {command!r}, '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        f"print(sorted(m for m in {SERVER_STACK!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: hearth " + command in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_the_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    listed = hearth_cli("--help")
    assert listed.returncode == 0, listed.stderr
    for command in COMMANDS:
        assert f" {command} " in listed.stdout, command
    unknown = hearth_cli("no-such-command")
    assert unknown.returncode == 2
    assert "No such command 'no-such-command'" in unknown.stderr
    assert app.info.help in listed.stdout
