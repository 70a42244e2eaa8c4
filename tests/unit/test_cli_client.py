"""The command line's own API client (where it sends, as the SDK does), and its exit statuses
when a command's stream is lost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import typer

from hearth.cli.client import ApiClient
from hearth.cli.common import EXIT_LOST, EXIT_NOT_STARTED
from hearth.cli.exec import _follow as follow_exec
from hearth.sdk import ExecStarted, HearthConnectionError


@pytest.mark.parametrize("url", ["http://hearth.test:4000", "http://hearth.test:4000/"])
def test_a_url_with_or_without_a_trailing_slash_gives_the_same_paths(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "//api/vms" is another path to the server: every command but the SDK's answered 404.
    monkeypatch.setenv("HEARTH_URL", url)
    assert ApiClient(key="k").url == "http://hearth.test:4000"


class LostAfter:
    """A VM whose command's events break off after ``events`` with the SDK's ``error``."""

    def __init__(self, events: list[object], error: HearthConnectionError) -> None:
        self.events = events
        self.error = error

    def exec_stream(self, cmd: list[str], **options: object) -> Iterator[object]:
        yield from self.events
        raise self.error


NEVER_SENT = HearthConnectionError("unreachable", "ConnectError: refused")
ANSWER_LOST = HearthConnectionError("outcome_unknown", "RemoteProtocolError: disconnected")
GAVE_UP = HearthConnectionError("stream_broken", "gave up after 5 breaks in a row")


@pytest.mark.parametrize(
    ("events", "error", "status"),
    [
        ([], NEVER_SENT, EXIT_NOT_STARTED),
        ([], ANSWER_LOST, EXIT_LOST),
        ([], GAVE_UP, EXIT_LOST),
        ([ExecStarted(exec_id="x1", pid=7, id=0)], GAVE_UP, EXIT_LOST),
    ],
    ids=["never-sent", "answer-lost", "opened-then-broke", "after-started"],
)
def test_hearth_exec_says_not_run_only_for_a_command_that_did_not_start(
    events: list[object], error: HearthConnectionError, status: int
) -> None:
    # 125 tells a wrapper the command never ran (safe to try again); one that started, or may
    # have (its request went out), and was lost must not read so.
    with pytest.raises(typer.Exit) as ended:
        follow_exec(LostAfter(events, error), ["true"], {})  # type: ignore[arg-type]
    assert ended.value.exit_code == status
