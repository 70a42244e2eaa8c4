"""Agent start-up modes, the one-time claim, logging hygiene and shutdown, on real subprocesses."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from hearth_agent import __version__

if TYPE_CHECKING:
    from conftest import AgentLauncher, AgentProcess

Documents = Callable[..., dict[str, object]]


def new_claim_token() -> str:
    """A token in the accepted alphabet, different each call."""
    return base64.urlsafe_b64encode(os.urandom(33)).decode()


def claim(agent: AgentProcess, body: object) -> httpx.Response:
    """POST /init without credentials, as the controller does on first contact."""
    with agent.client() as client:
        return client.post("/init", json=body)


# --- start-up modes ----------------------------------------------------------------------------


def test_agent_refuses_to_start_without_a_token_file(agent_launcher: AgentLauncher) -> None:
    agent = agent_launcher.run_to_exit()

    assert agent.process.returncode == 2
    records = agent.log_records()
    assert records[-1]["event"] == "config_error"
    assert "token file" in str(records[-1]["message"])
    assert "--insecure-no-auth" in str(records[-1]["message"])


def test_agent_refuses_a_missing_token_file_unless_claims_are_allowed(
    agent_launcher: AgentLauncher,
) -> None:
    agent = agent_launcher.run_to_exit("--token-file", str(agent_launcher.token_file))

    assert agent.process.returncode == 2
    assert "--allow-claim" in agent.log_text()


def test_agent_refuses_insecure_mode_combined_with_a_token_file(
    agent_launcher: AgentLauncher,
) -> None:
    agent_launcher.write_token()
    agent = agent_launcher.run_to_exit(
        "--insecure-no-auth", "--token-file", str(agent_launcher.token_file)
    )
    assert agent.process.returncode == 2


def test_listen_port_zero_logs_the_bound_port(agent: AgentProcess) -> None:
    listening = [r for r in agent.log_records() if r["event"] == "listening"]
    assert len(listening) == 1
    assert listening[0]["port"] == agent.port
    assert listening[0]["auth"] == "token"


def test_insecure_mode_serves_without_auth_and_warns(
    agent_launcher: AgentLauncher, make_document: Documents
) -> None:
    agent = agent_launcher.start("--insecure-no-auth")

    with agent.client() as client:
        put = client.put("/credentials/oidc", content=json.dumps(make_document("oidc")).encode())
        health = client.get("/health").json()
        init = client.post("/init", json={"token": new_claim_token()})

    assert put.status_code == 200
    assert health["claimed"] is False
    assert init.status_code == 409
    assert init.json()["error"]["code"] == "already_claimed"
    warnings = [r for r in agent.log_records() if r["event"] == "insecure_no_auth"]
    assert warnings
    assert warnings[0]["level"] == "warning"
    assert "disabled" in str(warnings[0]["message"])


def test_init_on_an_agent_started_with_a_token_returns_409(agent: AgentProcess) -> None:
    response = claim(agent, {"token": new_claim_token()})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_claimed"
    assert agent.token_file.read_text().strip() == agent.token


# --- claiming --------------------------------------------------------------------------------


@pytest.fixture
def unclaimed_agent(agent_launcher: AgentLauncher) -> AgentProcess:
    """An agent with --allow-claim whose token file does not exist yet."""
    return agent_launcher.start(
        "--token-file", str(agent_launcher.token_file), "--allow-claim", "--no-reseed"
    )


def test_unclaimed_agent_answers_401_unclaimed(unclaimed_agent: AgentProcess) -> None:
    with unclaimed_agent.client(new_claim_token()) as client:
        version = client.get("/version")
        health = client.get("/health").json()
    assert version.status_code == 401
    assert version.json()["error"]["code"] == "unclaimed"
    assert health["claimed"] is False


def test_claim_stores_the_token_and_then_requires_it(unclaimed_agent: AgentProcess) -> None:
    token = new_claim_token()

    response = claim(unclaimed_agent, {"token": token})

    assert response.status_code == 200
    assert response.json() == {
        "claimed": True,
        "version": __version__,
        "clock_set": False,
        "reseeded": False,
        "entropy_bits": 0,
        "vnc": False,  # not a Browser VM: no VNC password to write
    }
    token_file = unclaimed_agent.token_file
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(token_file.parent).st_mode) == 0o700
    with unclaimed_agent.client() as anonymous:
        assert anonymous.get("/version").json()["error"]["code"] == "unauthorized"
        assert anonymous.get("/health").json()["claimed"] is True
    with unclaimed_agent.client(token) as client:
        assert client.get("/version").status_code == 200


def test_a_second_claim_returns_409(unclaimed_agent: AgentProcess) -> None:
    first = new_claim_token()
    assert claim(unclaimed_agent, {"token": first}).status_code == 200

    second = claim(unclaimed_agent, {"token": new_claim_token()})

    assert second.status_code == 409
    assert second.json()["error"]["code"] == "already_claimed"
    assert unclaimed_agent.token_file.read_text().strip() == first


def test_concurrent_claims_let_exactly_one_win(unclaimed_agent: AgentProcess) -> None:
    tokens = [new_claim_token() for _ in range(12)]
    statuses: dict[str, int] = {}

    def attempt(token: str) -> None:
        statuses[token] = claim(unclaimed_agent, {"token": token}).status_code

    workers = [threading.Thread(target=attempt, args=(token,)) for token in tokens]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    winners = [token for token, status in statuses.items() if status == 200]
    assert len(winners) == 1
    assert sorted(statuses.values()) == [200] + [409] * 11
    assert unclaimed_agent.token_file.read_text().strip() == winners[0]


def test_a_no_reseed_agent_neither_reseeds_nor_sets_the_clock_on_claim(
    unclaimed_agent: AgentProcess,
) -> None:
    # --no-reseed is an agent outside a VM (these tests run as root on the CI host): an
    # unauthenticated /init must not step the host's clock. The current time, so that an agent
    # that did set it would leave it (nearly) where it was.
    body = {
        "token": new_claim_token(),
        "time": time.time(),
        "entropy": base64.b64encode(os.urandom(64)).decode(),
    }

    response = claim(unclaimed_agent, body)

    assert response.status_code == 200
    answer = response.json()
    assert (answer["clock_set"], answer["reseeded"], answer["entropy_bits"]) == (False, False, 0)
    assert [r["clock_set"] for r in unclaimed_agent.log_records() if r["event"] == "claimed"] == [
        False
    ]


@pytest.mark.parametrize(
    "entropy", [None, base64.b64encode(os.urandom(31)).decode()], ids=["none", "31_bytes"]
)
def test_a_reseeding_agent_refuses_a_claim_without_enough_entropy_and_stays_unclaimed(
    agent_launcher: AgentLauncher, entropy: str | None
) -> None:
    agent = agent_launcher.start("--token-file", str(agent_launcher.token_file), "--allow-claim")
    body: dict[str, object] = {"token": new_claim_token()}
    if entropy is not None:
        body["entropy"] = entropy

    response = claim(agent, body)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "entropy" in response.json()["error"]["message"]
    assert not agent_launcher.token_file.exists()
    with agent.client() as anonymous:
        assert anonymous.get("/health").json()["claimed"] is False


def test_a_restarted_agent_stays_claimed(
    agent_launcher: AgentLauncher, unclaimed_agent: AgentProcess
) -> None:
    token = new_claim_token()
    assert claim(unclaimed_agent, {"token": token}).status_code == 200
    assert unclaimed_agent.stop() == 0

    restarted = agent_launcher.start(
        "--token-file", str(agent_launcher.token_file), "--allow-claim", "--no-reseed"
    )

    assert claim(restarted, {"token": new_claim_token()}).status_code == 409
    with restarted.client() as anonymous:
        assert anonymous.get("/version").json()["error"]["code"] == "unauthorized"
    with restarted.client(token) as client:
        assert client.get("/version").status_code == 200


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({}, "token"),
        ({"token": "short"}, "token"),
        ({"token": "x" * 513}, "token"),
        ({"token": "a" * 31 + "!"}, "token"),
        ({"token": 12345}, "token"),
        ({"token": "t" * 40, "time": "now"}, "time"),
        ({"token": "t" * 40, "time": True}, "time"),
        ({"token": "t" * 40, "entropy": "not base64!"}, "entropy"),
        ({"token": "t" * 40, "entropy": base64.b64encode(b"x" * 4097).decode()}, "entropy"),
    ],
)
def test_init_with_a_bad_body_returns_422_naming_the_field(
    unclaimed_agent: AgentProcess, body: dict[str, object], field_name: str
) -> None:
    response = claim(unclaimed_agent, body)

    assert response.status_code == 422
    assert f"'{field_name}'" in response.json()["error"]["message"]
    assert not unclaimed_agent.token_file.exists()
    assert claim(unclaimed_agent, {"token": new_claim_token()}).status_code == 200


def test_init_with_malformed_json_returns_400(unclaimed_agent: AgentProcess) -> None:
    with unclaimed_agent.client() as client:
        response = client.post("/init", content=b"{token")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_init_with_deeply_nested_json_returns_400_and_the_agent_stays_claimable(
    unclaimed_agent: AgentProcess,
) -> None:
    with unclaimed_agent.client() as client:
        response = client.post("/init", content=b"[" * 100_000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert "nesting" in response.json()["error"]["message"]
    assert claim(unclaimed_agent, {"token": new_claim_token()}).status_code == 200


# --- logging and shutdown ----------------------------------------------------------------------


def test_log_is_json_lines_without_tokens_or_credentials(
    agent_launcher: AgentLauncher, make_document: Documents
) -> None:
    agent = agent_launcher.start(
        "--token-file", str(agent_launcher.token_file), "--allow-claim", "--no-reseed"
    )
    token = new_claim_token()
    assert claim(agent, {"token": token}).status_code == 200
    secrets = [token, "s3cret-marker"]
    with agent.client(token) as client:
        for provider in ("claude_code", "codex", "gemini_cli", "oidc"):
            document = make_document(provider, marker="s3cret-marker")
            client.put(f"/credentials/{provider}", content=json.dumps(document).encode())
            client.get(f"/credentials/{provider}", params={"content": "true"})
            client.post("/credentials/write", json={"provider": provider, "credentials": document})
        client.put("/credentials/oidc", content=b'{"access_token": "s3cret-marker"')
        client.put("/credentials/oidc", content=b'{"access_token": ["s3cret-marker"]}')
    with agent.client("wrong-s3cret-marker") as wrong:
        wrong.get("/version")

    text = agent.log_text()
    records = agent.log_records()  # fails if any line is not JSON

    for secret in secrets:
        assert secret not in text
    requests = [r for r in records if r["event"] == "http_request"]
    assert requests
    for record in requests:
        assert set(record) == {"ts", "level", "event", "method", "route", "status", "duration_ms"}
    assert {r["route"] for r in requests} >= {"/init", "/credentials/{provider}"}


def test_sigterm_stops_the_agent_with_exit_code_0(agent: AgentProcess) -> None:
    assert agent.stop(signal.SIGTERM) == 0
    assert agent.log_records()[-1]["event"] == "stopped"


def test_random_answers_fresh_getrandom_bytes_to_the_token_holder(
    unclaimed_agent: AgentProcess,
) -> None:
    token = new_claim_token()
    assert claim(unclaimed_agent, {"token": token}).status_code == 200
    with unclaimed_agent.client() as anonymous:
        assert anonymous.get("/random").status_code == 401
    with unclaimed_agent.client(token) as client:
        samples = [client.get("/random").json() for _ in range(2)]
    decoded = [base64.b64decode(sample["getrandom"]) for sample in samples]
    assert [len(d) for d in decoded] == [32, 32]
    assert decoded[0] != decoded[1]
    assert isinstance(samples[0]["entropy_avail"], int)
