"""The agent's HTTP endpoints against a real agent subprocess: storage, validation, errors."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import AgentProcess

Documents = Callable[..., dict[str, object]]

PRIMARY_PATHS = {
    "claude_code": ".claude/.credentials.json",
    "codex": ".codex/auth.json",
    "gemini_cli": ".gemini/oauth_creds.json",
    "oidc": ".config/hearth/oidc.json",
}
EXPIRIES = {
    "claude_code": 1_900_000_000.0,
    "codex": 2_000_000_000.0,
    "gemini_cli": 1_900_000_000.5,
    "oidc": 1_900_000_000.25,
}


def mode_of(path: Path) -> int:
    """Permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


def error_of(response: httpx.Response) -> dict[str, str]:
    """The ``error`` object of a JSON error response (fails on anything else)."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message"}
    return error  # type: ignore[no-any-return]


def put_document(client: httpx.Client, provider: str, document: object) -> httpx.Response:
    """PUT a document serialised the way a controller would."""
    return client.put(f"/credentials/{provider}", content=json.dumps(document, indent=1).encode())


# --- health, version, metrics ---------------------------------------------------------------


def test_health_answers_without_a_token(anonymous_client: httpx.Client) -> None:
    response = anonymous_client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == "0.1.0"
    assert body["claimed"] is True
    assert isinstance(body["uptime_s"], float)


def test_version_lists_python_and_providers(agent_client: httpx.Client) -> None:
    body = agent_client.get("/version").json()
    assert body["version"] == "0.1.0"
    assert body["python"].count(".") == 2
    assert body["providers"] == ["claude_code", "codex", "gemini_cli", "oidc"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/version"),
        ("GET", "/metrics"),
        ("GET", "/credentials/claude_code"),
        ("PUT", "/credentials/claude_code"),
        ("DELETE", "/credentials/claude_code"),
        ("POST", "/credentials/write"),
    ],
)
def test_endpoints_other_than_health_require_the_token(
    anonymous_client: httpx.Client, method: str, path: str
) -> None:
    response = anonymous_client.request(method, path, content=b"{}")
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_wrong_token_returns_401(agent: AgentProcess) -> None:
    with agent.client("x" * 43) as client:
        response = client.get("/version")
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_metrics_expose_request_and_write_counters(
    agent_client: httpx.Client, make_document: Documents
) -> None:
    assert put_document(agent_client, "claude_code", make_document("claude_code")).is_success
    assert put_document(agent_client, "claude_code", {"claudeAiOauth": 1}).status_code == 422
    agent_client.get("/no/such/route")

    response = agent_client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert (
        'hearth_agent_http_requests_total{route="/credentials/{provider}",method="PUT",'
        'status="200"} 1' in text
    )
    assert 'hearth_agent_http_requests_total{route="unmatched",method="GET",status="404"} 1' in text
    assert 'hearth_agent_credential_writes_total{provider="claude_code",result="ok"} 1' in text
    assert 'hearth_agent_credential_writes_total{provider="claude_code",result="invalid"} 1' in text
    assert 'hearth_agent_credential_writes_total{provider="codex",result="ok"} 0' in text
    assert "hearth_agent_uptime_seconds " in text
    assert 'hearth_agent_info{version="0.1.0"} 1' in text
    assert "/no/such/route" not in text


# --- PUT /credentials/{provider} --------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(PRIMARY_PATHS))
def test_put_writes_the_exact_body_with_owner_only_modes(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents, provider: str
) -> None:
    body = json.dumps(make_document(provider), indent=3).encode() + b"\n\n"

    response = agent_client.put(f"/credentials/{provider}", content=body)

    assert response.status_code == 200, response.text
    target = agent.home / PRIMARY_PATHS[provider]
    assert target.read_bytes() == body
    assert response.json() == {
        "provider": provider,
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "path": f"~/{PRIMARY_PATHS[provider]}",
    }
    assert mode_of(target) == 0o600
    assert mode_of(target.parent) == 0o700


def test_put_tightens_an_existing_credential_dir_to_0700(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    credential_dir = agent.home / ".codex"
    credential_dir.mkdir(parents=True, mode=0o755)
    credential_dir.chmod(0o755)

    assert put_document(agent_client, "codex", make_document("codex")).status_code == 200

    assert mode_of(credential_dir) == 0o700


def test_put_claude_marks_onboarding_complete_and_the_workspace_trusted_keeping_other_keys(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    side_file = agent.home / ".claude.json"
    agent.home.mkdir(parents=True, exist_ok=True)
    side_file.write_text(json.dumps({"numStartups": 7, "projects": {"/w": {"x": 1}}}))

    assert put_document(agent_client, "claude_code", make_document("claude_code")).is_success

    merged = json.loads(side_file.read_text())
    assert merged == {
        "numStartups": 7,
        "projects": {
            "/w": {"x": 1},
            str(agent.home / "workspace"): {"hasTrustDialogAccepted": True},
        },
        "hasCompletedOnboarding": True,
    }
    assert mode_of(side_file) == 0o600


def test_put_gemini_selects_oauth_personal_keeping_other_settings(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    settings = agent.home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"theme": "dark", "security": {"folderTrust": {"on": True}}}))

    assert put_document(agent_client, "gemini_cli", make_document("gemini_cli")).is_success

    assert json.loads(settings.read_text()) == {
        "theme": "dark",
        "security": {"folderTrust": {"on": True}, "auth": {"selectedType": "oauth-personal"}},
    }
    assert mode_of(settings) == 0o600


def test_put_gemini_creates_settings_when_absent(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    assert put_document(agent_client, "gemini_cli", make_document("gemini_cli")).is_success

    settings = json.loads((agent.home / ".gemini" / "settings.json").read_text())
    assert settings == {"security": {"auth": {"selectedType": "oauth-personal"}}}
    trusted = json.loads((agent.home / ".gemini" / "trustedFolders.json").read_text())
    assert trusted == {str(agent.home / "workspace"): "TRUST_FOLDER"}


def test_put_replaces_a_side_file_that_is_not_json_and_logs_a_warning(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    agent.home.mkdir(parents=True, exist_ok=True)
    (agent.home / ".claude.json").write_text("{not json")

    assert put_document(agent_client, "claude_code", make_document("claude_code")).is_success

    assert json.loads((agent.home / ".claude.json").read_text()) == {
        "hasCompletedOnboarding": True,
        "projects": {str(agent.home / "workspace"): {"hasTrustDialogAccepted": True}},
    }
    warnings = [r for r in agent.log_records() if r["event"] == "side_file_replaced"]
    assert warnings
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["path"] == "~/.claude.json"


def test_put_ignores_a_path_key_inside_the_document(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    document = {**make_document("oidc"), "path": str(elsewhere)}

    response = put_document(agent_client, "oidc", document)

    assert response.status_code == 200
    assert response.json()["path"] == "~/.config/hearth/oidc.json"
    assert not elsewhere.exists()
    assert json.loads((agent.home / PRIMARY_PATHS["oidc"]).read_text()) == document


def test_put_unknown_provider_returns_404(agent_client: httpx.Client) -> None:
    response = agent_client.put("/credentials/aider", content=b"{}")
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_provider"


MISSING = object()


@pytest.mark.parametrize(
    ("provider", "field_name", "value", "phrase"),
    [
        ("claude_code", "claudeAiOauth.refreshToken", MISSING, "required"),
        ("claude_code", "claudeAiOauth.expiresAt", "soon", "integer"),
        ("claude_code", "claudeAiOauth.expiresAt", True, "integer"),
        ("codex", "OPENAI_API_KEY", MISSING, "required"),
        ("codex", "tokens.id_token", MISSING, "required"),
        ("gemini_cli", "expiry_date", 1.5, "integer"),
        ("oidc", "issuer", MISSING, "required"),
    ],
)
def test_put_invalid_document_returns_422_naming_the_field(
    agent: AgentProcess,
    agent_client: httpx.Client,
    make_document: Documents,
    provider: str,
    field_name: str,
    value: object,
    phrase: str,
) -> None:
    document = make_document(provider)
    *parents, leaf = field_name.split(".")
    node = document
    for key in parents:
        node = node[key]  # type: ignore[assignment]
    if value is MISSING:
        del node[leaf]
    else:
        node[leaf] = value

    response = put_document(agent_client, provider, document)

    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_document"
    assert f"'{field_name}'" in error["message"]
    assert phrase in error["message"]
    assert not (agent.home / PRIMARY_PATHS[provider]).exists()


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_put_non_object_document_returns_422_invalid_document(
    agent_client: httpx.Client, body: bytes
) -> None:
    response = agent_client.put("/credentials/oidc", content=body)
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_document"


@pytest.mark.parametrize("body", [b"{", b"", b"\xff\xfe{}", b'{"a": NaN}', b"{} trailing"])
def test_put_malformed_json_returns_400(agent_client: httpx.Client, body: bytes) -> None:
    response = agent_client.put("/credentials/oidc", content=body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 65 + b"]" * 65],
    ids=["unclosed-arrays", "unclosed-objects", "closed-but-65-deep"],
)
def test_put_deeply_nested_json_returns_400_not_500(
    agent_client: httpx.Client, body: bytes
) -> None:
    response = agent_client.put("/credentials/oidc", content=body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


def test_put_declaring_more_than_1mib_returns_413_without_reading_the_body(
    agent: AgentProcess,
) -> None:
    request = (
        "PUT /credentials/oidc HTTP/1.1\r\nHost: agent\r\n"
        f"Authorization: Bearer {agent.token}\r\nContent-Length: 1048577\r\n\r\n"
    ).encode()

    # No body follows: an agent that tried to read it would hang past the read deadline.
    response = agent.send_raw(request, read_deadline_s=3.0)

    assert response.status == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_put_sending_a_body_over_1mib_gets_a_clean_413(agent_client: httpx.Client) -> None:
    response = agent_client.put("/credentials/oidc", content=b" " * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


def test_put_without_content_length_returns_411(agent: AgentProcess) -> None:
    request = (
        "PUT /credentials/oidc HTTP/1.1\r\nHost: agent\r\n"
        f"Authorization: Bearer {agent.token}\r\n\r\n"
    ).encode()
    response = agent.send_raw(request)
    assert response.status == 411
    assert response.json()["error"]["code"] == "length_required"


def test_put_with_a_chunked_body_returns_411(agent_client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"{}"

    response = agent_client.put("/credentials/oidc", content=chunks())
    assert response.status_code == 411
    assert error_of(response)["code"] == "length_required"


def test_put_without_a_token_writes_nothing(
    agent: AgentProcess, anonymous_client: httpx.Client, make_document: Documents
) -> None:
    response = put_document(anonymous_client, "oidc", make_document("oidc"))
    assert response.status_code == 401
    assert not (agent.home / PRIMARY_PATHS["oidc"]).exists()


# --- GET and DELETE /credentials/{provider} ------------------------------------------------------


def test_get_absent_credentials_reports_not_present(agent_client: httpx.Client) -> None:
    response = agent_client.get("/credentials/codex")
    assert response.status_code == 200
    assert response.json() == {
        "provider": "codex",
        "present": False,
        "sha256": None,
        "bytes": None,
        "mtime": None,
        "mode": None,
        "expires_at": None,
    }


def test_get_absent_credentials_with_content_returns_404(agent_client: httpx.Client) -> None:
    response = agent_client.get("/credentials/codex", params={"content": "true"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("provider", sorted(PRIMARY_PATHS))
def test_get_reports_digest_size_mtime_and_expiry(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents, provider: str
) -> None:
    body = json.dumps(make_document(provider)).encode()
    agent_client.put(f"/credentials/{provider}", content=body).raise_for_status()

    status = agent_client.get(f"/credentials/{provider}").json()

    assert status == {
        "provider": provider,
        "present": True,
        "sha256": hashlib.sha256(body).hexdigest(),
        "bytes": len(body),
        "mtime": pytest.approx(os.stat(agent.home / PRIMARY_PATHS[provider]).st_mtime),
        "mode": "0600",
        "expires_at": EXPIRIES[provider],
    }


def test_get_with_content_returns_the_stored_document(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    document = make_document("codex")
    put_document(agent_client, "codex", document).raise_for_status()
    # The CLI rotates its refresh token in place; the controller pulls the new one back.
    rotated = json.loads((agent.home / PRIMARY_PATHS["codex"]).read_text())
    rotated["tokens"]["refresh_token"] = "rt-rotated"
    (agent.home / PRIMARY_PATHS["codex"]).write_text(json.dumps(rotated))

    body = agent_client.get("/credentials/codex", params={"content": "true"}).json()

    assert body["present"] is True
    assert body["document"] == rotated


def test_get_with_a_bad_content_flag_returns_422(agent_client: httpx.Client) -> None:
    response = agent_client.get("/credentials/codex", params={"content": "maybe"})
    assert response.status_code == 422
    assert "content" in error_of(response)["message"]


def test_get_unknown_provider_returns_404(agent_client: httpx.Client) -> None:
    response = agent_client.get("/credentials/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_provider"


def test_delete_removes_the_primary_file_and_keeps_side_files(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    put_document(agent_client, "claude_code", make_document("claude_code")).raise_for_status()

    response = agent_client.delete("/credentials/claude_code")

    assert response.status_code == 200
    assert response.json() == {"provider": "claude_code", "deleted": True}
    assert not (agent.home / PRIMARY_PATHS["claude_code"]).exists()
    assert (agent.home / ".claude.json").exists()
    assert agent_client.get("/credentials/claude_code").json()["present"] is False


def test_delete_absent_credentials_reports_not_deleted(agent_client: httpx.Client) -> None:
    response = agent_client.delete("/credentials/gemini_cli")
    assert response.status_code == 200
    assert response.json() == {"provider": "gemini_cli", "deleted": False}


# --- POST /credentials/write (original controller's route) -------------------------------------


def test_write_route_stores_the_credentials_pretty_printed(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    credentials = make_document("gemini_cli")

    response = agent_client.post(
        "/credentials/write", json={"provider": "gemini_cli", "credentials": credentials}
    )

    assert response.status_code == 200
    expected = (json.dumps(credentials, indent=2, sort_keys=False) + "\n").encode()
    assert (agent.home / PRIMARY_PATHS["gemini_cli"]).read_bytes() == expected
    assert response.json()["sha256"] == hashlib.sha256(expected).hexdigest()
    assert response.json()["bytes"] == len(expected)
    settings = json.loads((agent.home / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "oauth-personal"


def test_write_route_rejects_a_path_with_422(
    agent_client: httpx.Client, make_document: Documents, tmp_path: Path
) -> None:
    response = agent_client.post(
        "/credentials/write",
        json={"provider": "oidc", "credentials": make_document("oidc"), "path": str(tmp_path)},
    )
    assert response.status_code == 422
    assert "paths are decided by the agent" in error_of(response)["message"]


def test_write_route_unknown_provider_returns_404(agent_client: httpx.Client) -> None:
    response = agent_client.post("/credentials/write", json={"provider": "x", "credentials": {}})
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_provider"


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"credentials": {}}, "'provider'"),
        ({"provider": 3, "credentials": {}}, "'provider'"),
        ({"provider": "oidc"}, "'credentials'"),
        ({"provider": "oidc", "credentials": []}, "JSON object"),
        ({"provider": "oidc", "credentials": {"access_token": "a"}}, "'refresh_token'"),
        ([], "JSON object"),
    ],
)
def test_write_route_invalid_body_returns_422_naming_the_field(
    agent_client: httpx.Client, body: object, phrase: str
) -> None:
    response = agent_client.post("/credentials/write", json=body)
    assert response.status_code == 422
    assert phrase in error_of(response)["message"]


# --- routing and protocol errors -----------------------------------------------------------


def test_unknown_route_returns_404_not_found(agent_client: httpx.Client) -> None:
    response = agent_client.get("/credentials/claude_code/extra")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/credentials/claude_code", "GET, PUT, DELETE"),
        ("POST", "/credentials/claude_code", "GET, PUT, DELETE"),
        ("OPTIONS", "/credentials/claude_code", "GET, PUT, DELETE"),
        ("GET", "/credentials/write", "POST"),
        ("DELETE", "/health", "GET"),
        ("GET", "/init", "POST"),
    ],
)
def test_wrong_method_returns_405_with_allow(
    agent_client: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = agent_client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert error_of(response)["code"] == "method_not_allowed"


def test_head_returns_405_without_a_body(agent_client: httpx.Client) -> None:
    response = agent_client.head("/health")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.content == b""


def test_unsupported_method_returns_json_501(agent_client: httpx.Client) -> None:
    response = agent_client.request("TRACE", "/health")
    assert response.status_code == 501
    assert error_of(response)["code"] == "method_not_implemented"


@pytest.mark.parametrize(
    "request_bytes",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /health HTTP/1.1 x\r\n\r\n"],
)
def test_a_garbled_request_gets_a_json_error_not_html(
    agent: AgentProcess, request_bytes: bytes
) -> None:
    response = agent.send_raw(request_bytes)
    assert response.status in (400, 505)
    assert response.headers["content-type"] == "application/json"
    assert b"<" not in response.body
    assert int(response.headers["content-length"]) == len(response.body)


def test_responses_close_the_connection_with_an_exact_length(agent_client: httpx.Client) -> None:
    response = agent_client.get("/health")
    assert response.http_version == "HTTP/1.1"
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.content)


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_writers_leave_exactly_one_complete_document(
    agent: AgentProcess, make_document: Documents
) -> None:
    threads, writes_each = 16, 4
    bodies: list[bytes] = []
    for index in range(threads * writes_each):
        document = make_document("claude_code", marker=f"{index}-" + "x" * 20_000)
        bodies.append(json.dumps(document, indent=index % 4).encode())
    failures: list[str] = []

    def writer(worker: int) -> None:
        with agent.client(agent.token) as client:
            for body in bodies[worker * writes_each : (worker + 1) * writes_each]:
                response = client.put("/credentials/claude_code", content=body)
                if response.status_code != 200:
                    failures.append(response.text)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert not failures
    final = (agent.home / PRIMARY_PATHS["claude_code"]).read_bytes()
    assert final in bodies
    json.loads(final)
    assert sorted(os.listdir(agent.home / ".claude")) == [".credentials.json"]
    # the workspace is where execs run (created at start)
    assert sorted(p.name for p in agent.home.iterdir()) == [".claude", ".claude.json", "workspace"]


# --- failures --------------------------------------------------------------------------------


def test_a_filesystem_failure_returns_500_storage_error_and_is_counted(
    agent: AgentProcess, agent_client: httpx.Client, make_document: Documents
) -> None:
    agent.home.mkdir(parents=True, exist_ok=True)
    (agent.home / ".codex").write_text("a file where the credential directory belongs")

    response = put_document(agent_client, "codex", make_document("codex", marker="s3cret"))

    assert response.status_code == 500
    assert error_of(response)["code"] == "storage_error"
    metrics = agent_client.get("/metrics").text
    assert 'hearth_agent_credential_writes_total{provider="codex",result="error"} 1' in metrics
    failures = [r for r in agent.log_records() if r["event"] == "storage_failed"]
    assert failures[0]["path"] == "~/.codex/auth.json"
    assert "s3cret" not in agent.log_text()
