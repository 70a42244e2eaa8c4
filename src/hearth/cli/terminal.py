"""``hearth terminal VM``: print a one-time link to a terminal page in a CLI VM.

The link opens a login shell on a pseudo-terminal in the VM, in a browser (xterm.js). It works
once, and only within ``HEARTH_TERMINAL_LINK_TTL_S`` (60 s by default): run this again for
another. Its token rides in the link's fragment, which browsers never send to a server.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from hearth.cli.client import ApiClient
from hearth.cli.common import fail
from hearth.errors import HearthError


def terminal_command(
    vm_id: Annotated[str, typer.Argument(help="the CLI VM")],
) -> None:
    """Print a one-time link to a terminal (a login shell) in a CLI VM, for a browser."""
    try:
        client = ApiClient()
        answer = client.request("POST", f"/api/vms/{quote(vm_id, safe='')}/terminal")
    except HearthError as exc:
        fail(exc)
    print(f"{client.url.rstrip('/')}{answer['url']}")
