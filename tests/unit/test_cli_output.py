"""What the command line prints of the API's answers: every string as it is, never read as Rich
markup or emoji codes (a name with ``[…]`` in it, an error that quotes one)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from hearth.cli import app

ODD = "[Errno 2] no [/] such [bold]file:thumbs_up:"
VM = {
    "id": "vm-1",
    "userId": "ann",
    "vmType": "cli",
    "status": "failed",
    "bootMode": "restore",
    "agentUrl": "http://127.0.0.1:9/[x]",
    "agentVersion": "0.1.0",
    "createdAt": "2026-12-06T00:00:00Z",
    "error": ODD,
}


class FakeApi:
    """The CLI's API client, answering ``VM`` (or the list of it) to every request."""

    url = "http://hearth.test"

    def request(self, method: str, path: str, **options: Any) -> Any:
        return {"vms": [VM]} if path == "/api/vms" else VM


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["vm", "show", "vm-1"], ODD),
        (["vm", "list"], "http://127.0.0.1:9/[x]"),
        (["vm", "destroy", "vm-1"], "vm-1: failed"),
    ],
)
def test_vm_commands_print_the_apis_strings_as_they_are(
    args: list[str], shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hearth.cli.vms.ApiClient", FakeApi)
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert shown in result.output
