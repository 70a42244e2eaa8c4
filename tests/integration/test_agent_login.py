"""The agent's ``oidc`` login, completed for real: agent subprocess, oidc-provider, a scripted user.

The user is an httpx client with cookies (``SignInBrowser``): it opens the authorize URL the
agent returns, signs in as alice, consents, and follows the redirect to the agent's loopback
callback, exactly as the VM's Chromium would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from hearth_agent.providers import get_provider
from tests.integration.conftest import port_accepts
from tests.integration.oidc_fixtures import *  # noqa: F403
from tests.integration.oidc_fixtures import OidcServer, SignInBrowser, first_form

if TYPE_CHECKING:
    from conftest import AgentProcess

POLL_DEADLINE_S = 10.0


@pytest.fixture
def start_body(oidc_server: OidcServer) -> dict[str, object]:
    """A valid ``POST /login/start`` body for the test server."""
    return {"provider": "oidc", "issuer": oidc_server.issuer, "client_id": oidc_server.client_id}


@pytest.fixture
def browser() -> Iterator[SignInBrowser]:
    """A fresh browser profile (no cookies) for the user."""
    with SignInBrowser() as user:
        yield user


def start_login(client: httpx.Client, body: dict[str, object]) -> dict[str, Any]:
    """Start a login and return the 201 body."""
    response = client.post("/login/start", json=body)
    assert response.status_code == 201, response.text
    started: dict[str, Any] = response.json()
    return started


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds, failing after POLL_DEADLINE_S."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def callback_port(started: dict[str, Any]) -> int:
    """The loopback port of the redirect_uri in the authorize URL."""
    query = parse_qs(urlsplit(started["authorize_url"]).query)
    port = urlsplit(query["redirect_uri"][0]).port
    assert port is not None
    return port


def complete_login(browser: SignInBrowser, started: dict[str, Any]) -> httpx.Response:
    """Sign in as alice, consent, and land on the agent's callback page."""
    consent_page = browser.sign_in(started["authorize_url"])
    return browser.consent(consent_page)


def login_status(client: httpx.Client, login_id: str) -> str:
    """The session's status."""
    status = client.get(f"/login/{login_id}").json()["status"]
    assert isinstance(status, str)
    return status


def metric_value(client: httpx.Client, series: str) -> float:
    """The value of one exposition line from /metrics (0 if absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- the whole login ------------------------------------------------------------------------


def test_oidc_login_captures_tokens_the_user_granted_in_the_browser(
    agent_client: httpx.Client,
    browser: SignInBrowser,
    start_body: dict[str, object],
    oidc_server: OidcServer,
) -> None:
    before = time.time()
    started = start_login(agent_client, start_body)

    assert started["provider"] == "oidc"
    assert started["status"] == "waiting_for_user"
    assert isinstance(started["opened_in_browser"], bool)
    landing = complete_login(browser, started)

    assert landing.status_code == 200
    assert "You can close this window" in landing.text
    assert landing.url.host == "127.0.0.1"
    assert landing.url.port == callback_port(started)
    status = agent_client.get(f"/login/{started['login_id']}")
    assert status.json() == {
        "login_id": started["login_id"],
        "provider": "oidc",
        "status": "captured",
        "error": None,
    }
    document = agent_client.get(f"/login/{started['login_id']}?content=true").json()["document"]
    assert get_provider("oidc").validate(document) == document
    assert document["issuer"] == oidc_server.issuer
    assert document["access_token"]
    assert document["refresh_token"]
    assert document["id_token"].count(".") == 2
    # oidc-provider's access tokens live an hour.
    assert before + 3600 - 5 <= document["expires_at"] <= time.time() + 3600 + 5


def test_captured_refresh_token_is_accepted_by_the_issuer(
    agent_client: httpx.Client,
    browser: SignInBrowser,
    start_body: dict[str, object],
    oidc_server: OidcServer,
) -> None:
    started = start_login(agent_client, start_body)
    complete_login(browser, started)
    document = agent_client.get(f"/login/{started['login_id']}?content=true").json()["document"]

    refreshed = httpx.post(
        oidc_server.token_endpoint(),
        data={
            "grant_type": "refresh_token",
            "refresh_token": document["refresh_token"],
            "client_id": oidc_server.client_id,
        },
    )

    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != document["refresh_token"]  # rotated


def test_authorize_url_asks_for_code_with_pkce_s256_and_consent(
    agent_client: httpx.Client, start_body: dict[str, object], oidc_server: OidcServer
) -> None:
    started = start_login(agent_client, start_body)
    url = urlsplit(started["authorize_url"])
    query = {name: values[0] for name, values in parse_qs(url.query).items()}

    assert f"{url.scheme}://{url.netloc}" == oidc_server.issuer
    assert query["response_type"] == "code"
    assert query["client_id"] == oidc_server.client_id
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert query["scope"] == "openid offline_access"
    assert query["prompt"] == "consent"
    assert query["redirect_uri"] == f"http://127.0.0.1:{callback_port(started)}/callback"
    assert len(query["state"]) >= 32
    assert len(query["nonce"]) >= 32
    assert "code_verifier" not in query


def test_callback_server_closes_once_tokens_are_captured(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body)
    port = callback_port(started)
    assert port_accepts(port)

    complete_login(browser, started)

    wait_for(lambda: not port_accepts(port), f"callback port {port} to close")


def test_requested_callback_port_is_used(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    started = start_login(agent_client, start_body | {"callback_port": free_port})
    complete_login(browser, started)

    assert callback_port(started) == free_port
    assert login_status(agent_client, started["login_id"]) == "captured"


def test_busy_callback_port_is_refused_with_409(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as occupant:
        port = occupant.getsockname()[1]
        response = agent_client.post("/login/start", json=start_body | {"callback_port": port})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "callback_port_unavailable"
    assert str(port) in response.json()["error"]["message"]
    start_login(agent_client, start_body)  # the failed start holds no slot


# --- the user's mistakes and strangers' callbacks --------------------------------------------


def test_wrong_password_shows_the_login_form_again_and_the_login_keeps_waiting(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body)

    retry_page = browser.sign_in(started["authorize_url"], password="looking-glass")

    assert "Invalid login or password" in retry_page.text
    assert "password" in first_form(retry_page).inputs
    assert login_status(agent_client, started["login_id"]) == "waiting_for_user"
    consent_page = browser.submit(retry_page, login="alice", password="wonderland")
    landing = browser.consent(consent_page)
    assert "You can close this window" in landing.text
    assert login_status(agent_client, started["login_id"]) == "captured"


def test_callback_with_a_wrong_state_is_refused_and_the_real_one_still_completes(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body)
    port = callback_port(started)

    forged = httpx.get(f"http://127.0.0.1:{port}/callback?code=forged&state=not-the-state")
    missing = httpx.get(f"http://127.0.0.1:{port}/callback?code=forged")

    assert forged.status_code == 400
    assert missing.status_code == 400
    assert "does not belong" in forged.text
    assert login_status(agent_client, started["login_id"]) == "waiting_for_user"
    landing = complete_login(browser, started)
    assert landing.status_code == 200
    assert login_status(agent_client, started["login_id"]) == "captured"


def test_user_cancelling_at_the_provider_fails_the_login_with_its_error(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body)
    login_page = browser.open(started["authorize_url"])

    # The login page's "Cancel" link: the provider redirects back with error=access_denied.
    abort = urlsplit(str(login_page.url)).path + "/abort"
    landing = browser.open(str(login_page.url.join(abort)))

    assert landing.url.port == callback_port(started)
    assert "Sign-in failed" in landing.text
    status = agent_client.get(f"/login/{started['login_id']}").json()
    assert (status["status"], status["error"]) == ("failed", "access_denied")
    assert agent_client.get(f"/login/{started['login_id']}?content=true").json()["document"] is None


# --- controller operations -------------------------------------------------------------------


def test_cancel_ends_the_login_and_closes_the_callback_port(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body)
    port = callback_port(started)

    cancelled = agent_client.delete(f"/login/{started['login_id']}")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert not port_accepts(port)
    assert login_status(agent_client, started["login_id"]) == "cancelled"
    again = agent_client.delete(f"/login/{started['login_id']}")
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")
    start_login(agent_client, start_body)  # the provider is free again


def test_a_long_poll_answers_when_the_login_is_captured(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    """``?wait=`` holds the request until the login ends, so the controller hears of the
    capture as it happens; a wait that runs out answers with the status as it is."""
    started = start_login(agent_client, start_body)
    login_id = started["login_id"]
    short = agent_client.get(f"/login/{login_id}", params={"wait": "0.2"})
    assert (short.json()["status"], short.json()["waited"]) == ("waiting_for_user", True)
    assert "waited" not in agent_client.get(f"/login/{login_id}").json()

    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(agent_client.get, f"/login/{login_id}?wait=30", timeout=60)
        time.sleep(0.5)
        assert not polling.done(), "the long poll answered before the login ended"
        complete_login(browser, started)
        answer = polling.result(timeout=60)

    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["waited"]) == ("captured", True)


@pytest.mark.parametrize("wait", ["soon", "-1", "31", "nan", ""])
def test_a_wait_that_is_not_0_to_30_seconds_is_422(
    agent_client: httpx.Client, start_body: dict[str, object], wait: str
) -> None:
    started = start_login(agent_client, start_body)

    response = agent_client.get(f"/login/{started['login_id']}?wait={wait}")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "'wait'" in response.json()["error"]["message"]


def test_a_second_login_for_the_same_provider_is_refused_with_409(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    first = start_login(agent_client, start_body)

    second = agent_client.post("/login/start", json=start_body)

    assert second.status_code == 409
    assert second.json()["error"]["code"] == "login_active"
    assert first["login_id"] in second.json()["error"]["message"]
    assert login_status(agent_client, first["login_id"]) == "waiting_for_user"


def test_discovery_failure_answers_502_naming_the_discovery_url(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        issuer = f"http://127.0.0.1:{bound.getsockname()[1]}"
        response = agent_client.post("/login/start", json=start_body | {"issuer": issuer})

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "discovery_failed"
    assert f"{issuer}/.well-known/openid-configuration" in error["message"]
    assert "refused" in error["message"]
    start_login(agent_client, start_body)  # the failed start holds no slot


def test_login_times_out_at_its_deadline_and_closes_the_callback_port(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body | {"timeout_s": 1})
    port = callback_port(started)

    wait_for(lambda: login_status(agent_client, started["login_id"]) == "failed", "the timeout")

    assert agent_client.get(f"/login/{started['login_id']}").json()["error"] == "timeout"
    wait_for(lambda: not port_accepts(port), f"callback port {port} to close")
    series = 'hearth_agent_logins_total{provider="oidc",outcome="timeout"}'
    wait_for(lambda: metric_value(agent_client, series) == 1, "the timeout to be counted")


def test_document_is_null_until_captured(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    started = start_login(agent_client, start_body)

    response = agent_client.get(f"/login/{started['login_id']}", params={"content": "true"})

    assert response.json()["document"] is None
    assert response.json()["status"] == "waiting_for_user"


def test_logins_are_counted_by_provider_and_outcome(
    agent_client: httpx.Client, browser: SignInBrowser, start_body: dict[str, object]
) -> None:
    captured = start_login(agent_client, start_body)
    complete_login(browser, captured)
    cancelled = start_login(agent_client, start_body)
    agent_client.delete(f"/login/{cancelled['login_id']}")

    def counted(outcome: str) -> float:
        return metric_value(
            agent_client, f'hearth_agent_logins_total{{provider="oidc",outcome="{outcome}"}}'
        )

    wait_for(lambda: counted("captured") == 1, "the captured login to be counted")
    assert counted("cancelled") == 1
    assert counted("failed") == 0
    assert (
        metric_value(
            agent_client,
            'hearth_agent_http_requests_total{route="/login/{login_id}",method="DELETE",status="200"}',
        )
        == 1
    )


# --- refusals ---------------------------------------------------------------------------------


def test_login_endpoints_require_the_token(
    agent: AgentProcess, anonymous_client: httpx.Client, start_body: dict[str, object]
) -> None:
    with agent.client("wrong-" + "x" * 40) as wrong:
        responses = [
            anonymous_client.post("/login/start", json=start_body),
            anonymous_client.get("/login/0123456789abcdef"),
            anonymous_client.delete("/login/0123456789abcdef"),
            wrong.post("/login/start", json=start_body),
        ]

    assert [r.status_code for r in responses] == [401, 401, 401, 401]
    assert {r.json()["error"]["code"] for r in responses} == {"unauthorized"}


def test_unknown_login_id_is_404(agent_client: httpx.Client) -> None:
    response = agent_client.get("/login/0123456789abcdef")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "login_not_found"


def test_unknown_provider_is_404_naming_the_supported_ones(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    response = agent_client.post("/login/start", json=start_body | {"provider": "nonesuch"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_provider"
    assert "supported: claude_code" in response.json()["error"]["message"]


def test_vendor_login_refuses_oidc_fields_before_starting_anything(
    agent_client: httpx.Client, start_body: dict[str, object]
) -> None:
    response = agent_client.post("/login/start", json=start_body | {"provider": "codex"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "unknown field(s) for a vendor login: " in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"issuer": "ftp://127.0.0.1/"}, "issuer"),
        ({"issuer": None}, "issuer"),
        ({"client_id": 7}, "client_id"),
        ({"scope": "openid  offline_access"}, "scope"),
        ({"callback_port": 70000}, "callback_port"),
        ({"callback_port": True}, "callback_port"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"redirect_uri": "http://evil.example/"}, "redirect_uri"),
        ({"provider": 3}, "provider"),
    ],
)
def test_invalid_start_fields_are_422_naming_the_field(
    agent_client: httpx.Client, start_body: dict[str, object], change: dict[str, object], field: str
) -> None:
    response = agent_client.post("/login/start", json=start_body | change)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert f"'{field}'" in response.json()["error"]["message"]


def test_missing_client_id_is_422(agent_client: httpx.Client, oidc_server: OidcServer) -> None:
    response = agent_client.post(
        "/login/start", json={"provider": "oidc", "issuer": oidc_server.issuer}
    )

    assert response.status_code == 422
    assert "'client_id' is required" in response.json()["error"]["message"]


# --- hygiene ----------------------------------------------------------------------------------


def test_tokens_code_and_state_never_appear_in_the_agent_log(
    agent: AgentProcess,
    agent_client: httpx.Client,
    browser: SignInBrowser,
    start_body: dict[str, object],
) -> None:
    started = start_login(agent_client, start_body)
    state = parse_qs(urlsplit(started["authorize_url"]).query)["state"][0]
    consent_page = browser.sign_in(started["authorize_url"])
    consent = first_form(consent_page)
    # Stop at the redirect to learn the code, then deliver it as the browser would.
    redirect = browser.client.post(
        str(consent_page.url.join(consent.action)), data=consent.hidden, follow_redirects=False
    )
    while "code=" not in redirect.headers.get("location", ""):
        redirect = browser.client.get(
            str(redirect.url.join(redirect.headers["location"])), follow_redirects=False
        )
    callback_url = str(redirect.url.join(redirect.headers["location"]))
    code = parse_qs(urlsplit(callback_url).query)["code"][0]
    browser.open(callback_url)
    document = agent_client.get(f"/login/{started['login_id']}?content=true").json()["document"]
    wait_for(lambda: '"login_ended"' in agent.log_text(), "the login_ended log line")

    log = agent.log_text()
    secrets_seen = {
        "access_token": document["access_token"],
        "refresh_token": document["refresh_token"],
        "id_token": document["id_token"],
        "code": code,
        "state": state,
        "authorize_url": started["authorize_url"],
    }
    assert [name for name, value in secrets_seen.items() if value in log] == []
    events = {record["event"] for record in agent.log_records()}
    assert {"login_started", "oidc_login_waiting", "login_ended"} <= events
