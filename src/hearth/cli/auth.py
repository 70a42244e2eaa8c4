"""``hearth auth login --user U --provider P``: start a login, print its view link, follow it.

The link (token-gated, shown once) is where the user watches the Browser VM and signs in. The
command then follows the session with a Rich status line until it ends, and exits 0 when it
completed (the credential is in the user's CLI VM), 1 when it failed, timed out or was
cancelled (its error shown). Ctrl-C cancels the login.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from hearth.cli.client import ApiClient
from hearth.cli.common import console, ending_on_errors, err_console, plain
from hearth.sdk import AuthSession, Hearth
from hearth.sdk._config import Deadline
from hearth_agent.wire import Provider

auth_app = typer.Typer(help="Logins to the providers, through a Browser VM.", no_args_is_help=True)


def _follow(session: AuthSession, timeout_s: float) -> AuthSession:
    deadline = Deadline(f"login {session.id}", timeout_s=timeout_s, interval_s=1.0)
    shown = ""
    name = escape(session.id)
    with err_console.status(f"login {name}: {escape(session.status)}") as status:
        while not session.refresh().ended:
            if session.status != shown:
                shown = session.status
                status.update(f"login {name}: {escape(shown)}")
            time.sleep(deadline.next_pause_s())
    return session


@auth_app.command("login")
def login(
    provider: Annotated[Provider, typer.Option(help="whose login")],
    user: Annotated[str | None, typer.Option(help="the user (an admin key must name one)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the login")] = 900.0,
) -> None:
    """Start a login for the user, print the link to open, and follow it to its end."""
    with ending_on_errors():
        api = ApiClient()
        with Hearth(api.url, api.key) as client:
            session = client.auth.start(user, provider.value)
            if session.view_url is None:
                err_console.print(
                    f"a {provider.value} login of this user is already in progress "
                    f"({escape(session.id)}); its link was shown when it started"
                )
            else:
                # One line whatever the terminal's width: a link broken in two does not work.
                console.print(plain(f"{api.url}{session.view_url}"), soft_wrap=True)
            try:
                session = _follow(session, timeout)
            except KeyboardInterrupt:
                session.cancel()
                err_console.print(f"login {escape(session.id)} cancelled")
                raise typer.Exit(1) from None
    if session.status == "completed":
        err_console.print(
            f"[green]completed[/green]: delivered into VM {escape(str(session.vm_id))}"
        )
        return
    err_console.print(f"[red]{escape(session.status)}[/red]: {escape(session.error_message or '')}")
    raise typer.Exit(1)
