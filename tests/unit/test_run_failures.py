"""A CLI's error text read as a run failure, and scrubbed before anyone sees it.

The messages are the pinned CLIs' own (their headless output against stand-ins, and strings in
their binaries and bundles).
"""

from __future__ import annotations

import pytest

from hearth.runs.events import RunFailure
from hearth.runs.failures import (
    MESSAGE_MAX_CHARS,
    classify,
    classify_status,
    exit_description,
    readable,
    scrub,
    stderr_cause,
)

NOT_LOGGED_IN = [
    "Not logged in · Please run /login",
    "Invalid API key · Fix external API key",
    "Failed to authenticate: OAuth session expired and could not be refreshed",
    "unexpected status 401 Unauthorized: Incorrect API key provided: sk-proj-****1234.",
    "Your access token could not be refreshed because your refresh token was revoked. Please "
    "log out and sign in again.",
    "no Codex credentials were found",
    '[API Error: {"error":{"code":401,"message":"Request had invalid authentication '
    'credentials.","status":"UNAUTHENTICATED"}}]',
    "Manual authorization is required but the current session is non-interactive.",
    "Please set an Auth method in your /root/.gemini/settings.json or specify one of the "
    "following environment variables before running: GEMINI_API_KEY",
    "Invalid auth method selected.",
]
RATE_LIMITED = [
    "You've hit your 5-hour limit · resets 1:53am (UTC)",
    "API Error: Request rejected (429) · This request would exceed your account's rate limit.",
    "exceeded retry limit, last status: 429 Too Many Requests",
    "You\u2019ve hit your usage limit. Upgrade to Pro or try again at 1:53 AM.",
    "Quota exceeded. Check your plan and billing details.",
    "Your workspace is out of credits. Add credits to continue using Codex.",
    "[API Error: Quota exceeded for quota metric 'gemini-3-flash Requests']",
    "Attempt 1 failed with status 429. Retrying with backoff... RESOURCE_EXHAUSTED",
]
UNREACHABLE = [
    "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)",
    "API Error: Connection to the API was lost (ECONNRESET). This is usually temporary.",
    "API Error: 529 Overloaded. This is a server-side issue, usually temporary.",
    "stream disconnected before completion: stream closed before response.completed",
    "Reconnecting... waiting for network (Connection failed: error sending request)",
    "We\u2019re currently experiencing high demand, which may cause temporary errors.",
    "Model stream ended without a finish reason.",
    "[API Error: Premature close]",
    "Attempt 2 failed with status 503. Retrying with backoff... UNAVAILABLE",
    "request to https://cloudcode-pa.googleapis.com failed: self-signed certificate in chain",
]
UNKNOWN = [
    "API Error: Invalid URL",
    "No conversation found with session ID: 00000000-0000-4000-8000-000000000000",
    "Error: thread/resume: thread/resume failed: no rollout found for thread id x",
    "Reached max session turns for this session.",
    "Ripgrep is not available. Falling back to GrepTool.",
    "Warning: 256-color support not detected.",
]


@pytest.mark.parametrize(
    ("said", "failure"),
    [
        *((s, RunFailure.NOT_LOGGED_IN) for s in NOT_LOGGED_IN),
        *((s, RunFailure.RATE_LIMITED) for s in RATE_LIMITED),
        *((s, RunFailure.PROVIDER_UNREACHABLE) for s in UNREACHABLE),
        *((s, None) for s in UNKNOWN),
    ],
)
def test_cli_error_text_names_its_failure(said: str, failure: RunFailure | None) -> None:
    assert classify(said) is failure


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (401, RunFailure.NOT_LOGGED_IN),
        (403, RunFailure.NOT_LOGGED_IN),
        (429, RunFailure.RATE_LIMITED),
        (408, RunFailure.PROVIDER_UNREACHABLE),
        (500, RunFailure.PROVIDER_UNREACHABLE),
        (529, RunFailure.PROVIDER_UNREACHABLE),
        (400, None),
        (404, None),
        (None, None),
    ],
)
def test_http_statuses_name_their_failure(status: int | None, failure: RunFailure | None) -> None:
    assert classify_status(status) is failure


def test_stderr_cause_is_its_last_line_naming_a_failure() -> None:
    stderr = (
        "Attempt 1 failed with status 429. Retrying with backoff...\n"
        "    at async Config.refreshAuth (file:///x/chunk.js:1:1)\n"
        "Ripgrep is not available. Falling back to GrepTool.\n"
    )
    assert stderr_cause(stderr) == (
        RunFailure.RATE_LIMITED,
        "Attempt 1 failed with status 429. Retrying with backoff...",
    )


def test_stderr_cause_without_a_failure_is_the_last_error_line_or_nothing() -> None:
    assert stderr_cause("Reading additional input from stdin...\nError: disk full\nbye\n") == (
        None,
        "Error: disk full",
    )
    assert stderr_cause("Warning: 256-color support not detected.\n\n  }\n") == (None, "")
    assert stderr_cause("") == (None, "")


def test_an_embedded_provider_error_body_is_said_in_words() -> None:
    body = '{"error":{"code":429,"message":"Resource has been exhausted.","status":"X"}}'
    assert readable(f"[API Error: {body}]") == "API error 429 X: Resource has been exhausted."
    assert readable('{"error": {"message": "nope"}}') == "API error: nope"
    assert readable('[API Error: {"error": "cut') == '[API Error: {"error": "cut'
    assert readable("no body here") == "no body here"


@pytest.mark.parametrize(
    "secret",
    [
        "sk-ant-oat01-Zx9_Qw8-Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNm",
        "sk-proj-AbCdEf0123456789GhIjKl",
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJ1c2VyLTEifQ.U2lnbmF0dXJl",
        "ya29.a0AfB_byC1d2E3f4G5h6",
        "1//0eXampleRefreshToken-xyz",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
        "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVbNmPq",
        "0123456789abcdef0123456789abcdef",
    ],
)
def test_scrub_removes_tokens_and_keys(secret: str) -> None:
    said = scrub(f"refresh failed for {secret}: 401")
    assert secret not in said
    assert said == "refresh failed for [redacted]: 401"


def test_scrub_removes_bearers_secret_fields_and_url_queries() -> None:
    said = scrub(
        "Authorization: Bearer abc.def GET https://auth.openai.com/oauth/token?code=c0de&state=s "
        '{"access_token": "opaque-but-short", "password":"hunter2"}'
    )
    for leaked in ("abc.def", "c0de", "state=s", "opaque-but-short", "hunter2"):
        assert leaked not in said
    assert "https://auth.openai.com/oauth/token?[redacted]" in said


def test_scrub_keeps_what_explains_the_failure() -> None:
    kept = (
        "No conversation found with session ID: 0f93dd13-19d3-4113-bc2b-24c9669101f2 in "
        "/var/cache/hearth/vendor/a672636f537fff35b9da/root "
        "(run-sendMessageStream-2026-12-04T00-45-58-149Z.json; max_tokens: 100; code -32600)"
    )
    assert scrub(kept) == kept


def test_scrub_makes_one_short_line_without_colours() -> None:
    assert scrub("\x1b[31mFailed\x1b[0m\n  to   start\n") == "Failed to start"
    long = scrub("x " * MESSAGE_MAX_CHARS)
    assert len(long) == MESSAGE_MAX_CHARS
    assert long.endswith("…")


def test_exit_descriptions() -> None:
    assert exit_description("codex", exit_code=1, signal=None) == "codex exited with status 1"
    assert (
        exit_description("claude", exit_code=None, signal=9)
        == "claude was killed by signal 9 (SIGKILL)"
    )
    assert exit_description("gemini", exit_code=None, signal=99) == "gemini was killed by signal 99"
    assert exit_description("gemini", exit_code=None, signal=None) == (
        "gemini ended without an exit status"
    )
