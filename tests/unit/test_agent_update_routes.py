"""POST /agent/update and /version through the app's dispatch, with in-memory requests: the
refusals that happen before anything is staged, and what ``--updates`` accepts at start."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from hearth_agent.app import AgentApp
from hearth_agent.bodies import RequestBody
from hearth_agent.claim import AuthGate
from hearth_agent.errors import ConfigError
from hearth_agent.install_root import InstallRoot
from hearth_agent.log import JsonLogger
from hearth_agent.metrics import AgentMetrics
from hearth_agent.routing import Request
from hearth_agent.storage import CredentialStore
from hearth_agent.update import MAX_BUNDLE_BYTES, SHA256_HEADER, VERSION_HEADER
from hearth_agent.updater import AgentUpdater


def make_app(tmp_path: Path, updater: AgentUpdater | None) -> AgentApp:
    """An insecure-mode app, with or without an updater."""
    logger = JsonLogger(stream=io.StringIO())
    return AgentApp(
        store=CredentialStore(home=tmp_path / "home", logger=logger),
        gate=AuthGate.from_options(
            token_file=None, insecure=True, allow_claim=False, logger=logger
        ),
        metrics=AgentMetrics(version="0.1.0", providers=("oidc",)),
        logger=logger,
        updater=updater,
    )


@pytest.fixture
def root(tmp_path: Path) -> InstallRoot:
    """An empty install root (nothing here may be touched by a refusal)."""
    path = tmp_path / "install"
    path.mkdir()
    return InstallRoot(path)


@pytest.fixture
def updater(root: InstallRoot) -> AgentUpdater:
    """An updater over ``root`` (built directly: ``create`` checks what the agent runs from)."""
    return AgentUpdater(
        root=root, host="0.0.0.0", port=8080, logger=JsonLogger(stream=io.StringIO())
    )


def update_request(body: bytes, headers: Mapping[str, str] | None = None) -> Request:
    """``POST /agent/update`` whose body streams from memory."""
    values = {
        "content-type": "application/gzip",
        VERSION_HEADER.lower(): "0.1.1",
        SHA256_HEADER.lower(): hashlib.sha256(body).hexdigest(),
        "content-length": str(len(body)),
        **(headers or {}),
    }
    return Request(
        method="POST",
        path="/agent/update",
        query={},
        authorization=None,
        read_body=lambda: body,
        headers=values,
        open_body=lambda cap: RequestBody(
            io.BufferedReader(io.BytesIO(body)), length=len(body), max_bytes=cap
        ),
    )


def error_of(app: AgentApp, request: Request) -> tuple[int, str]:
    """The status and error code the app answers."""
    route, response = app.dispatch(request)
    assert route == "/agent/update"
    return response.status, json.loads(response.body)["error"]["code"]


def test_without_an_updater_the_route_answers_409_updates_disabled(tmp_path: Path) -> None:
    app = make_app(tmp_path, None)

    assert error_of(app, update_request(b"x")) == (409, "updates_disabled")
    version = json.loads(app.dispatch(Request("GET", "/version", {}, None, lambda: b""))[1].body)
    assert (version["updates"], version["update"]) == (False, None)


def test_a_bundle_over_the_cap_is_413_and_nothing_is_written(
    tmp_path: Path, updater: AgentUpdater, root: InstallRoot
) -> None:
    app = make_app(tmp_path, updater)

    assert error_of(app, update_request(b"\0" * (MAX_BUNDLE_BYTES + 1))) == (
        413,
        "bundle_too_large",
    )
    assert list(root.path.iterdir()) == []


def test_a_digest_mismatch_is_422_and_nothing_is_written(
    tmp_path: Path, updater: AgentUpdater, root: InstallRoot
) -> None:
    app = make_app(tmp_path, updater)
    request = update_request(b"body", {SHA256_HEADER.lower(): "0" * 64})

    assert error_of(app, request) == (422, "digest_mismatch")
    assert list(root.path.iterdir()) == []


def test_version_says_updates_are_on_and_no_update_was_tried(
    tmp_path: Path, updater: AgentUpdater
) -> None:
    app = make_app(tmp_path, updater)

    version = json.loads(app.dispatch(Request("GET", "/version", {}, None, lambda: b""))[1].body)

    assert (version["updates"], version["update"]) == (True, None)


def test_updates_need_a_fixed_port_and_a_root_the_agent_runs_from(tmp_path: Path) -> None:
    logger = JsonLogger(stream=io.StringIO())
    with pytest.raises(ConfigError, match="fixed --listen port"):
        AgentUpdater.create(root_dir=tmp_path, host="127.0.0.1", port=0, logger=logger)
    with pytest.raises(ConfigError, match="does not run from"):
        AgentUpdater.create(root_dir=tmp_path, host="127.0.0.1", port=8080, logger=logger)
    assert list(tmp_path.iterdir()) == []  # not even the PID file
