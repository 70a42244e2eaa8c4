"""The CLI status check after a delivery, when the CLI VM's agent port answers as its root
chooses: the words it answers (the command, the reason, an error's message, megabytes of them
if it likes) reach the log and the login's error only cut short, while the check itself means
what it did (``logged_in: false`` fails the login). In process, the controller's ``Delivery``
asking a stand-in on loopback through a real agent client.
"""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from hearth.agent_client import AgentClient
from hearth.auth.delivery import Delivery
from hearth.errors import VmError
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, served

LONG = "x" * (1 << 20)  # a MiB of the guest's words
SHOWN = 400  # at most this of them in a log field or the error (with the note of what was cut)


def agent_port(status: int, body: dict[str, object]) -> Starlette:
    """A stand-in on a VM's agent port: ``GET /credentials/{provider}/status`` answers ``body``
    with ``status``."""

    async def cli_status(request: Request) -> Response:
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    return Starlette(routes=[Route("/credentials/{provider}/status", cli_status)])


async def checked(api: Api, status: int, body: dict[str, object]) -> list[dict[str, object]]:
    """Ask the stand-in answering ``body`` (with ``status``) for codex's CLI status; the logs."""
    delivery: Delivery = api.ctl.delivery
    async with served(agent_port(status, body)) as url:  # type: ignore[arg-type]
        agent = AgentClient(url, "token", vm_id="vm-1")
        with capture_logs() as logs:
            try:
                await delivery.check_with_cli(agent, "session-1", "codex", "vm-1")
            finally:
                for record in logs:
                    for value in record.values():
                        assert len(str(value)) < SHOWN, record["event"]
    return [dict(record) for record in logs]


async def test_a_long_not_logged_in_answer_fails_the_login_with_its_words_cut(api: Api) -> None:
    answer = {"command": LONG, "exit_code": LONG, "logged_in": False, "reason": LONG}
    with pytest.raises(VmError, match="says it is not logged in") as failed:
        await checked(api, 200, answer)
    assert len(failed.value.message) < 3 * SHOWN
    assert "more characters" in failed.value.message  # it says it was cut


@pytest.mark.parametrize(
    "answer",
    [
        {"command": ["codex", LONG], "exit_code": 0, "logged_in": True, "reason": {"r": LONG}},
        {"command": "codex login status", "exit_code": 0, "logged_in": LONG},
    ],
    ids=["nested", "logged-in-as-text"],
)
async def test_a_long_answer_that_fails_nothing_is_logged_cut(
    api: Api, answer: dict[str, object]
) -> None:
    logs = await checked(api, 200, answer)
    (record,) = [r for r in logs if r["event"] == "cli_status_checked"]
    assert record["exit_code"] == 0  # a number stays one


async def test_a_long_error_is_logged_cut_and_lets_the_login_through(api: Api) -> None:
    error = {"error": {"code": "cli_failed", "message": LONG}}
    logs = await checked(api, 500, error)
    (record,) = [r for r in logs if r["event"] == "cli_status_unavailable"]
    assert record["log_level"] == "warning"
