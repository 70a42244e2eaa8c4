"""The agent's ``oidc`` refresh against the real OAuth server (npm oidc-provider, access tokens of
a few seconds, refresh tokens rotating on use), through the controller's ``EgressProxy`` as a
CONNECT tunnel, the way a CLI VM reaches its issuer; and what bad settings get.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth_agent.errors import AgentError
from hearth_agent.log import JsonLogger
from hearth_agent.oidc_refresh import OidcRefresher
from hearth_agent.providers import get_provider
from hearth_agent.routing import Request
from hearth_agent.storage import CredentialStore
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer
from tests.integration.test_agent_oidc_proxy import ProxyThread
from tests.integration.test_api_credentials import oidc_login

OIDC = get_provider("oidc")


@pytest.fixture
def document(agent_client: httpx.Client, short_lived_oidc_server: OidcServer) -> dict[str, Any]:
    """A fresh document from a real login (through another agent, as in a Browser VM)."""
    return oidc_login(agent_client, short_lived_oidc_server)


def refresher_holding(home: Path, document: dict[str, Any]) -> tuple[OidcRefresher, str]:
    """A refresher over a store holding ``document``; the stored file's sha256."""
    store = CredentialStore(home=home, logger=JsonLogger(stream=io.StringIO()))
    written = store.write(OIDC, json.dumps(document).encode())
    return OidcRefresher(store=store, logger=JsonLogger(stream=io.StringIO())), written.sha256


def configure(refresher: OidcRefresher, body: dict[str, object]) -> int:
    """PUT the refresher's settings as the controller does; the HTTP status it answers."""
    (route,) = refresher.routes()
    request = Request(
        method="PUT",
        path=route.template,
        query={},
        authorization=None,
        read_body=lambda: json.dumps(body).encode(),
    )
    try:
        return route.handlers["PUT"](request, {}).status
    except AgentError as exc:
        return exc.http_status


def test_the_refresh_goes_through_the_egress_proxy_and_rotates_the_token(
    tmp_path: Path, document: dict[str, Any], short_lived_oidc_server: OidcServer
) -> None:
    server = short_lived_oidc_server
    target = f"127.0.0.1:{server.port}"
    proxy = ProxyThread(allow=[target], allow_private=[target])
    refresher, before = refresher_holding(tmp_path / "home", document)
    try:
        assert configure(refresher, {"proxy": proxy.url, "margin_s": 3600}) == 200
        assert refresher.check_once() == "refreshed"
        assert proxy.count("tunneled") == 2  # discovery, then the token endpoint
    finally:
        proxy.close()
    path = tmp_path / "home" / OIDC.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = json.loads(path.read_bytes())
    assert fresh["refresh_token"] != document["refresh_token"]
    assert fresh["access_token"] != document["access_token"]
    assert fresh["expires_at"] >= document["expires_at"]
    assert (fresh["issuer"], fresh["client_id"]) == (document["issuer"], document["client_id"])
    status = refresher.status()
    assert status["refreshes"] == 1
    assert status["sha256"] != before
    shown = json.dumps(status)
    for secret in (fresh["refresh_token"], fresh["access_token"], document["refresh_token"]):
        assert secret not in shown
    # The issuer refuses the refresh token the agent used up.
    reused = asyncio.run(server.refresh_grant(document["refresh_token"]))
    assert reused.json()["error"] == "invalid_grant"


def test_a_proxy_that_does_not_allow_the_issuer_leaves_the_document_and_retries(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    proxy = ProxyThread(allow=["id.example.test"], allow_private=[])
    refresher, _ = refresher_holding(tmp_path / "home", document)
    try:
        configure(refresher, {"proxy": proxy.url, "margin_s": 3600})
        assert refresher.check_once() == "failing"
        assert refresher.check_once() == "failing"  # tried again, not given up
        assert proxy.count("denied_host") == 2
    finally:
        proxy.close()
    assert refresher.status()["error"] == "discovery_failed"
    stored = json.loads((tmp_path / "home" / OIDC.path).read_bytes())
    assert stored == document


def test_a_lifetime_shorter_than_the_margin_does_not_refresh_on_every_check(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    # Each refreshed document is due again at once (a few seconds' lifetime, an hour's margin):
    # without a least gap between refreshes, every check (2 s) would hit the token endpoint.
    refresher, _ = refresher_holding(tmp_path / "home", document)
    configure(refresher, {"proxy": None, "margin_s": 3600})
    assert refresher.check_once() == "refreshed"
    once = (tmp_path / "home" / OIDC.path).read_bytes()

    assert refresher.check_once() == "refreshed"
    assert refresher.status()["refreshes"] == 1
    assert (tmp_path / "home" / OIDC.path).read_bytes() == once


def test_a_document_not_due_is_left_alone(tmp_path: Path, document: dict[str, Any]) -> None:
    refresher, _ = refresher_holding(tmp_path / "home", document)
    configure(refresher, {"proxy": None, "margin_s": 0})
    assert refresher.check_once() == "idle"
    assert json.loads((tmp_path / "home" / OIDC.path).read_bytes()) == document


@pytest.mark.parametrize(
    "body",
    [
        {"proxy": "https://10.0.2.100:3128"},
        {"proxy": 3128},
        {"margin_s": -1},
        {"margin_s": True},
        {"margin_s": 1e9},
    ],
)
def test_bad_settings_are_refused_and_change_nothing(
    tmp_path: Path, body: dict[str, object]
) -> None:
    store = CredentialStore(home=tmp_path, logger=JsonLogger(stream=io.StringIO()))
    refresher = OidcRefresher(store=store, logger=JsonLogger(stream=io.StringIO()))
    assert configure(refresher, body) == 422
    assert refresher.status()["proxy"] is None
    assert refresher.status()["margin_s"] == 60.0


def test_settings_survive_an_agent_restart(tmp_path: Path) -> None:
    store = CredentialStore(home=tmp_path, logger=JsonLogger(stream=io.StringIO()))
    first = OidcRefresher(store=store, logger=JsonLogger(stream=io.StringIO()))
    assert configure(first, {"proxy": "http://10.0.2.100:3128", "margin_s": 30}) == 200
    again = OidcRefresher(store=store, logger=JsonLogger(stream=io.StringIO()))
    assert again.status()["proxy"] == "http://10.0.2.100:3128"
    assert again.status()["margin_s"] == 30.0
    saved = tmp_path / ".config" / "hearth" / "oidc-refresh.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_a_fifo_where_the_settings_are_does_not_hold_the_agents_start(tmp_path: Path) -> None:
    # The refresher reads its settings as the agent starts: a FIFO there (or a link to
    # /dev/zero) must not stop the agent from coming up; the defaults are taken instead.
    saved = tmp_path / ".config" / "hearth" / "oidc-refresh.json"
    saved.parent.mkdir(parents=True)
    os.mkfifo(saved)
    store = CredentialStore(home=tmp_path, logger=JsonLogger(stream=io.StringIO()))
    made: list[OidcRefresher] = []
    starting = threading.Thread(
        target=lambda: made.append(
            OidcRefresher(store=store, logger=JsonLogger(stream=io.StringIO()))
        ),
        daemon=True,
    )
    starting.start()
    starting.join(timeout=5)
    if starting.is_alive():
        with open(saved, "wb"):  # let the old code's read end
            pass
        pytest.fail("the refresher was still reading its settings after 5 s")
    assert made[0].status()["proxy"] is None


def test_a_replace_loses_to_a_document_written_meanwhile(tmp_path: Path) -> None:
    store = CredentialStore(home=tmp_path, logger=JsonLogger(stream=io.StringIO()))
    first = store.write(OIDC, b'{"a": 1}')
    store.write(OIDC, b'{"b": 2}')
    assert store.replace(OIDC, b'{"c": 3}', sha256=first.sha256) is None
    assert (tmp_path / OIDC.path).read_bytes() == b'{"b": 2}'
