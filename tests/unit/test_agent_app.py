"""Dispatch and the error mapping of the agent app, driven with in-memory requests."""

from __future__ import annotations

import ast
import io
import json
import sys
from pathlib import Path

import pytest

import hearth_agent
from hearth_agent.app import AgentApp, Request
from hearth_agent.claim import AuthGate
from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.storage import CredentialStore

AGENT_PACKAGE = Path(hearth_agent.__file__).parent


@pytest.fixture
def log_stream() -> io.StringIO:
    """Captures the app's JSON log."""
    return io.StringIO()


@pytest.fixture
def app(tmp_path: Path, log_stream: io.StringIO) -> AgentApp:
    """An insecure-mode app storing under ``tmp_path``."""
    logger = JsonLogger(stream=log_stream)
    return AgentApp(
        store=CredentialStore(home=tmp_path, logger=logger),
        gate=AuthGate.from_options(
            token_file=None, insecure=True, allow_claim=False, logger=logger
        ),
        metrics=AgentMetrics(version="0.1.0", providers=("oidc",)),
        logger=logger,
    )


def request(method: str, path: str, body_source: object = b"") -> Request:
    """A Request whose body reader returns bytes or raises the given exception."""

    def read_body() -> bytes:
        if isinstance(body_source, BaseException):
            raise body_source
        assert isinstance(body_source, bytes)
        return body_source

    return Request(method=method, path=path, query={}, authorization=None, read_body=read_body)


def test_an_unexpected_exception_becomes_a_generic_500_with_a_request_id(
    app: AgentApp, log_stream: io.StringIO
) -> None:
    route, response = app.dispatch(
        request("PUT", "/credentials/oidc", RuntimeError("detail-with-s3cret"))
    )

    assert route == "/credentials/{provider}"
    assert response.status == 500
    error = json.loads(response.body)["error"]
    assert error["code"] == "internal"
    assert "s3cret" not in error["message"]
    logged = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    internal = [r for r in logged if r["event"] == "internal_error"]
    assert internal[0]["error_type"] == "RuntimeError"
    assert internal[0]["request_id"] in error["message"]
    assert "s3cret" not in log_stream.getvalue()


def test_restart_answers_202_and_asks_the_server_to_exit_after_sending(app: AgentApp) -> None:
    route, response = app.dispatch(request("POST", "/admin/restart"))

    assert (route, response.status, response.exit_after) == ("/admin/restart", 202, True)
    assert json.loads(response.body) == {"restarting": True}


def test_only_restart_asks_the_server_to_exit(app: AgentApp) -> None:
    for method, path in [("GET", "/health"), ("GET", "/admin/restart"), ("GET", "/version")]:
        assert app.dispatch(request(method, path))[1].exit_after is False


def test_unmatched_paths_are_reported_under_one_route_label(app: AgentApp) -> None:
    route, response = app.dispatch(request("GET", "/etc/passwd"))
    assert (route, response.status) == ("unmatched", 404)


def test_the_agent_imports_only_the_standard_library() -> None:
    imported: set[str] = set()
    for module in AGENT_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "hearth_agent"}
    assert not third_party
