"""A real OAuth server (npm oidc-provider, ``hearth/bench/oidc_server``) and a user to drive it.

``oidc_server`` starts ``node server.mjs`` once per session on a free loopback port and kills it
by PID at the end, proving it is gone. It runs the copy ``hearth.bench.oidc_install`` installed
under the cache dir; without ``node`` or that install the tests
are skipped with the command that fixes it, except under ``CI``, where they fail: CI must run
them. ``SignInBrowser`` is the user: an httpx client with cookies that follows redirects and
submits the server's forms, as a browser would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import NoReturn
from urllib.parse import urljoin

import httpx
import pytest

from hearth.bench.errors import BenchError
from hearth.bench.oidc_install import ready_dir
from hearth.config import Settings

# The fixtures; test modules take them with ``from ... import *`` (pytest finds them by name).
# oidc_server, session-scoped, is taken by tests/conftest.py (once per session, not per module).
__all__ = ["short_lived_oidc_server"]

CLIENT_ID = "hearth-test"
TEST_LOGIN = "alice"
TEST_PASSWORD = "wonderland"
# The client is "native": a loopback redirect URI matches on any port (RFC 8252 section 7.3).
REDIRECT_URIS = "http://127.0.0.1/callback"
# ``short_lived_oidc_server``'s access tokens, in seconds.
SHORT_ACCESS_TOKEN_TTL_S = 4
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 5.0


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the OIDC login tests must run)")
    pytest.skip(reason)


@dataclass
class OidcServer:
    """The running test OAuth server."""

    issuer: str
    port: int
    client_id: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr_text(self) -> str:
        """What the server wrote to stderr (oidc-provider's warnings, crashes)."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def token_endpoint(self) -> str:
        """The token endpoint, as its discovery document names it."""
        discovery = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5.0)
        discovery.raise_for_status()
        endpoint = discovery.json()["token_endpoint"]
        assert isinstance(endpoint, str)
        return endpoint

    async def refresh_grant(self, refresh_token: str) -> httpx.Response:
        """The token endpoint's answer to ``refresh_token`` (grant_type refresh_token), as the
        public client."""
        async with httpx.AsyncClient() as client:
            return await client.post(
                self.token_endpoint(),
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": refresh_token,
                    "client_id": self.client_id,
                },
            )

    def kill(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and reap it; idempotent."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE_S)


def _wait_until_listening(
    process: subprocess.Popen[bytes], stdout_path: Path, stderr_path: Path
) -> dict[str, object]:
    """The server's ``{"listening": ...}`` line; fail fast, quoting stderr, if it exits."""
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        for line in stdout_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if isinstance(record, dict) and "listening" in record:
                    return record
        if process.poll() is not None:
            pytest.fail(
                f"oidc server exited with {process.returncode} before listening:\n"
                + stderr_path.read_text(encoding="utf-8", errors="replace")
            )
        time.sleep(0.05)
    pytest.fail(f"oidc server printed no listening line within {START_DEADLINE_S}s")


@contextmanager
def running_oidc_server(logs: Path, **env: str) -> Iterator[OidcServer]:
    """The test OAuth server on 127.0.0.1 (``env``: more of server.mjs's variables, such as
    ``ACCESS_TOKEN_TTL``), killed by PID at the end."""
    node = shutil.which("node")
    if node is None:
        _unavailable("needs node (Node.js 20 or later) to run the test OAuth server")
    try:
        server_dir = ready_dir(Settings.from_env().cache_dir)
    except BenchError as exc:
        _unavailable(exc.message)
    stdout_path, stderr_path = logs / "stdout.log", logs / "stderr.log"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [node, "server.mjs"],
            cwd=server_dir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env={
                "PATH": os.environ.get("PATH", ""),
                "PORT": "0",
                "CLIENT_ID": CLIENT_ID,
                "REDIRECT_URIS": REDIRECT_URIS,
                **env,
            },
        )
    server: OidcServer | None = None
    try:
        record = _wait_until_listening(process, stdout_path, stderr_path)
        port, issuer = record["listening"], record["issuer"]
        assert isinstance(port, int)
        assert isinstance(issuer, str)
        server = OidcServer(
            issuer=issuer,
            port=port,
            client_id=CLIENT_ID,
            process=process,
            stderr_path=stderr_path,
        )
        yield server
    finally:
        if server is not None:
            server.kill()
        elif process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_DEADLINE_S)
        assert process.poll() is not None, f"oidc server pid {process.pid} left running"


@pytest.fixture(scope="session")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    """The test OAuth server on 127.0.0.1, one public client, user alice / wonderland."""
    with running_oidc_server(tmp_path_factory.mktemp("oidc-server")) as server:
        yield server


@pytest.fixture(scope="module")
def short_lived_oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    """The test OAuth server, its access tokens valid for ``SHORT_ACCESS_TOKEN_TTL_S``."""
    logs = tmp_path_factory.mktemp("oidc-short-lived")
    with running_oidc_server(logs, ACCESS_TOKEN_TTL=str(SHORT_ACCESS_TOKEN_TTL_S)) as server:
        yield server


@dataclass
class Form:
    """The first form of an HTML page: where it posts, its field names and hidden values."""

    action: str
    method: str
    inputs: list[str] = field(default_factory=list)
    hidden: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form: Form | None = None
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.form is None:
            self._inside = True
            self.form = Form(
                action=attributes.get("action", ""),
                method=attributes.get("method", "get").lower(),
            )
        elif tag == "input" and self._inside and self.form is not None:
            name = attributes.get("name", "")
            self.form.inputs.append(name)
            if attributes.get("type") == "hidden":
                self.form.hidden[name] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def first_form(page: httpx.Response) -> Form:
    """The first form on ``page``; fails the test, quoting the page, if there is none."""
    parser = _FormParser()
    parser.feed(page.text)
    if parser.form is None:
        pytest.fail(f"no form on {page.url} (HTTP {page.status_code}):\n{page.text[:2000]}")
    return parser.form


class SignInBrowser:
    """The user's browser: cookies, redirects followed, forms submitted like a person would."""

    def __init__(self) -> None:
        self.client = httpx.Client(follow_redirects=True, timeout=15.0)

    def __enter__(self) -> SignInBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def open(self, url: str) -> httpx.Response:
        """Navigate to ``url``, following redirects."""
        return self.client.get(url)

    def submit(self, page: httpx.Response, **fields: str) -> httpx.Response:
        """Fill the page's first form with ``fields`` (plus its hidden fields) and submit it."""
        form = first_form(page)
        assert form.method == "post", form
        return self.client.post(urljoin(str(page.url), form.action), data=form.hidden | fields)

    def sign_in(
        self, authorize_url: str, *, login: str = TEST_LOGIN, password: str = TEST_PASSWORD
    ) -> httpx.Response:
        """Open the authorize URL and submit the login form; the page that follows."""
        login_page = self.open(authorize_url)
        assert "password" in first_form(login_page).inputs, login_page.text
        return self.submit(login_page, login=login, password=password)

    def consent(self, consent_page: httpx.Response) -> httpx.Response:
        """Accept the consent form; the redirects end at the client's callback page."""
        assert "Authorize" in consent_page.text, consent_page.text
        return self.submit(consent_page)
