"""Login sessions run inside the Browser VM: their lifecycle, the registry, and the runner contract.

A login session is one attempt to obtain a provider's credentials by letting the user sign in
with the browser inside the VM. The agent keeps at most one active session per provider; the
controller starts it (``POST /login/start``), polls it (``GET /login/{id}``), pulls the captured
document (``?content=true``) and may cancel it (``DELETE /login/{id}``).

Lifecycle (``LoginStatus``; every move is a compare-and-set on the session)::

    starting ──▶ waiting_for_user ──▶ captured
        │               │
        └──────┬────────┴──▶ failed      (error says why: "timeout", "access_denied", ...)
               └───────────▶ cancelled

The registry owns what is common to every provider: the one-active-session rule, the deadline
(expiry → ``failed`` with error ``"timeout"``), opening the authorize URL in the VM's browser,
releasing the runner's resources once the session ends, metrics and logging. A ``LoginRunner``
owns what is specific to one provider.

Runner contract (``LoginRunner``), which the OIDC runner (``hearth_agent.oidc``) follows and the
vendor CLI runners will follow:

- ``start(session)`` prepares everything, returns the authorize URL the user must open, and leaves
  the capture running in the background; it may block for a bounded time (discovery, the CLI
  printing its URL) and raises an ``AgentError`` if the login cannot begin.
- In the background the runner reports exactly one outcome through the session:
  ``session.capture(document_bytes)`` with a document its provider's validator accepts, or
  ``session.fail(error)`` with a short error code. Either call may lose to a cancel or a timeout
  (it then returns False and the runner drops what it captured).
- ``cancel()`` releases everything ``start`` acquired (servers, processes, watchers, temporary
  files). The registry calls it once the session ended, however it ended; it must be idempotent,
  safe from any thread, quick, and must not raise.
- ``deadline_s`` is how long the user has to finish, counted from the start.
- Nothing secret is logged: not tokens, not authorization codes, not the authorize URL's state.

A vendor CLI runner (``codex login``, ``claude``, ``gemini``) plugs in as follows:

- ``start`` spawns the vendor's login command under a pseudo-terminal (``pty.fork``) with
  ``BROWSER`` pointing at a small helper that hands the URL it is given back to the agent (a
  fifo or a loopback request) instead of opening a browser itself; ``start`` returns that URL,
  or raises if the CLI exits or prints nothing within a start deadline. (gemini ignores
  ``BROWSER`` and calls ``xdg-open``: the helper is installed under that name on its ``PATH``.)
- Prompts are answered from a per-provider script: an ordered list of steps, each naming the
  prompt it expects (e.g. the theme picker, "trust this folder?") and the keys to send. The
  runner decodes the terminal output with a terminal-state parser, not regexes over raw bytes,
  so colour codes and cursor moves do not break matching; an unexpected prompt fails the
  session with ``"unexpected_prompt"`` instead of typing blindly. Trust dialogs are avoided up
  front where the CLI allows it (files the provider table already knows how to write).
- Capture watches the provider's credential file (``providers.CredentialFormat.path`` under a
  private home): once it exists and validates, its bytes go to ``session.capture``; the CLI exiting
  without it is ``session.fail("cli_exited")``.
- ``cancel`` kills the CLI's process group and removes the private home.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from hearth_agent.errors import AgentError, InvalidInput, NotFound
from hearth_agent.log import JsonLogger

# Ended sessions are kept (captured documents included) so the controller can still read their
# outcome; the oldest are forgotten past this many.
MAX_ENDED_SESSIONS = 16
ERROR_TIMEOUT = "timeout"
ERROR_INTERNAL = "internal"


_PROXY = re.compile(r"http://\d{1,3}(?:\.\d{1,3}){3}:\d{1,5}")


def proxy_field(body: Mapping[str, object]) -> str | None:
    """The optional ``proxy`` of a start body: the Browser VM's egress proxy, ``http://IPv4:port``.

    A runner sends its provider requests (discovery, token exchange, the vendor CLI's own) through
    it; the VM has no other way out.
    """
    proxy = body.get("proxy")
    if proxy is None:
        return None
    if not isinstance(proxy, str) or not _PROXY.fullmatch(proxy):
        raise InvalidInput("field 'proxy' must be http://IPv4:port")
    return proxy


def timeout_field(body: Mapping[str, object], *, default: float, maximum: float) -> float:
    """The optional ``timeout_s`` of a start body: seconds the user has, from 1 to ``maximum``."""
    return seconds_field(body, "timeout_s", default=default, low=1, high=maximum)


def seconds_field(
    body: Mapping[str, object], name: str, *, default: float, low: float, high: float
) -> float:
    """The optional number of seconds ``name`` of a body, from ``low`` to ``high``."""
    seconds = body.get(name, default)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not low <= seconds <= high
    ):
        raise InvalidInput(f"field '{name}' must be a number of seconds from {low:g} to {high:g}")
    return float(seconds)


class LoginActive(AgentError, code="login_active", http_status=409):
    """A login for this provider is already running (409); cancel it or wait for it to end."""


class LoginNotFound(NotFound, code="login_not_found"):
    """No login session has this id (404)."""


class LoginStatus(StrEnum):
    """Where a login session stands."""

    STARTING = "starting"  # the runner is preparing (discovery, callback server, CLI spawn)
    WAITING_FOR_USER = "waiting_for_user"  # the authorize URL is known; the user must sign in
    CAPTURED = "captured"  # credentials were captured and validated; they can be pulled
    FAILED = "failed"  # ended without credentials; ``error`` says why ("timeout" included)
    CANCELLED = "cancelled"  # ended by DELETE /login/{id}

    @property
    def ended(self) -> bool:
        """Whether no further transition is possible."""
        return not TRANSITIONS[self]


TRANSITIONS: dict[LoginStatus, frozenset[LoginStatus]] = {
    LoginStatus.STARTING: frozenset(
        {LoginStatus.WAITING_FOR_USER, LoginStatus.FAILED, LoginStatus.CANCELLED}
    ),
    LoginStatus.WAITING_FOR_USER: frozenset(
        {LoginStatus.CAPTURED, LoginStatus.FAILED, LoginStatus.CANCELLED}
    ),
    LoginStatus.CAPTURED: frozenset(),
    LoginStatus.FAILED: frozenset(),
    LoginStatus.CANCELLED: frozenset(),
}


class LoginOutcome(StrEnum):
    """How a login ended; the ``outcome`` label of the login counter."""

    CAPTURED = "captured"  # credentials captured
    FAILED = "failed"  # the provider, the network or the runner failed
    TIMEOUT = "timeout"  # the user did not finish before the deadline
    CANCELLED = "cancelled"  # cancelled through the API


@dataclass(frozen=True)
class LoginView:
    """A consistent snapshot of a session, without its document; ``repr`` hides the URL's state."""

    login_id: str
    provider: str
    status: LoginStatus
    authorize_url: str | None = field(repr=False)
    error: str | None
    opened_in_browser: bool


class LoginSession:
    """One login attempt; thread-safe, and every status change is a compare-and-set.

    The captured document is kept in memory only and never appears in ``repr``.
    """

    def __init__(self, *, login_id: str, provider: str) -> None:
        self.login_id = login_id
        self.provider = provider
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._status = LoginStatus.STARTING
        self._authorize_url: str | None = None
        self._error: str | None = None
        self._document: bytes | None = None
        self._opened_in_browser = False

    def __repr__(self) -> str:
        return f"LoginSession(login_id={self.login_id!r}, provider={self.provider!r})"

    def view(self) -> LoginView:
        """The session's current state."""
        with self._lock:
            return LoginView(
                login_id=self.login_id,
                provider=self.provider,
                status=self._status,
                authorize_url=self._authorize_url,
                error=self._error,
                opened_in_browser=self._opened_in_browser,
            )

    @property
    def status(self) -> LoginStatus:
        """The current status."""
        with self._lock:
            return self._status

    @property
    def document(self) -> bytes | None:
        """The captured credential document (JSON bytes), or None until captured."""
        with self._lock:
            return self._document

    @property
    def outcome(self) -> LoginOutcome | None:
        """How the session ended, or None while it is active."""
        with self._lock:
            status, error = self._status, self._error
        if status is LoginStatus.CAPTURED:
            return LoginOutcome.CAPTURED
        if status is LoginStatus.CANCELLED:
            return LoginOutcome.CANCELLED
        if status is LoginStatus.FAILED:
            return LoginOutcome.TIMEOUT if error == ERROR_TIMEOUT else LoginOutcome.FAILED
        return None

    def wait_for_user(self, authorize_url: str) -> bool:
        """starting → waiting_for_user, recording the URL the user must open."""
        return self._move(LoginStatus.WAITING_FOR_USER, authorize_url=authorize_url)

    def capture(self, document: bytes) -> bool:
        """waiting_for_user → captured with the validated document; False if it already ended."""
        return self._move(LoginStatus.CAPTURED, document=document)

    def fail(self, error: str) -> bool:
        """→ failed with a short error code; False if the session already ended."""
        return self._move(LoginStatus.FAILED, error=error)

    def cancel(self) -> bool:
        """→ cancelled; False if the session already ended."""
        return self._move(LoginStatus.CANCELLED)

    def mark_opened_in_browser(self, opened: bool) -> None:
        """Record whether the authorize URL was opened in the VM's browser."""
        with self._lock:
            self._opened_in_browser = opened

    def wait_until_ended(self, timeout_s: float | None) -> bool:
        """Block until the session ends or ``timeout_s`` passes; whether it ended."""
        return self._ended.wait(timeout_s)

    def _move(
        self,
        to: LoginStatus,
        *,
        authorize_url: str | None = None,
        error: str | None = None,
        document: bytes | None = None,
    ) -> bool:
        with self._lock:
            if to not in TRANSITIONS[self._status]:
                return False
            self._status = to
            if authorize_url is not None:
                self._authorize_url = authorize_url
            if error is not None:
                self._error = error
            if document is not None:
                self._document = document
        if to.ended:
            self._ended.set()
        return True


class LoginRunner(Protocol):
    """Drives one provider's login; see the module docstring for the full contract."""

    @property
    def deadline_s(self) -> float:
        """Seconds the user has to finish, from the start."""
        ...

    def start(self, session: LoginSession) -> str:
        """Begin the login and return the authorize URL; raise an AgentError if it cannot."""
        ...

    def cancel(self) -> None:
        """Release everything ``start`` acquired; idempotent, thread-safe, never raises."""
        ...


class LoginMetrics(Protocol):
    """Where ended logins are counted (``AgentMetrics`` in the agent)."""

    def observe_login(self, *, provider: str, outcome: LoginOutcome) -> None:
        """Count one login that ended with ``outcome``."""
        ...


UrlOpener = Callable[[str], bool]
# Builds a provider's runner from a ``POST /login/start`` body; InvalidInput names a bad field.
LoginRunnerFactory = Callable[[Mapping[str, object]], LoginRunner]


class LoginRegistry:
    """The agent's login sessions: at most one active per provider, each ended exactly once."""

    def __init__(self, *, logger: JsonLogger, metrics: LoginMetrics, open_url: UrlOpener) -> None:
        self._logger = logger
        self._metrics = metrics
        self._open_url = open_url
        self._lock = threading.Lock()
        self._sessions: dict[str, LoginSession] = {}
        self._runners: dict[str, LoginRunner] = {}

    def start(self, provider: str, runner: LoginRunner) -> LoginSession:
        """Start ``runner`` as the provider's login; LoginActive if one is already running.

        Returns once the session waits for the user (the URL opened in the browser if there is
        one). If the runner cannot start, the session is failed and the runner's error raised.
        """
        session = LoginSession(login_id=secrets.token_hex(16), provider=provider)
        with self._lock:
            for other in self._sessions.values():
                if other.provider == provider and not other.status.ended:
                    raise LoginActive(
                        f"a login for provider {provider!r} is already running "
                        f"(login id {other.login_id}); cancel it first"
                    )
            self._sessions[session.login_id] = session
            self._runners[session.login_id] = runner
            self._forget_oldest_ended()
        started = time.monotonic()
        try:
            authorize_url = runner.start(session)
        except AgentError as exc:
            session.fail(exc.code)
            self._finish(session)
            raise
        except Exception:
            session.fail(ERROR_INTERNAL)
            self._finish(session)
            raise
        # False only if the session was cancelled meanwhile (close()): then there is nothing to
        # open, and the watcher below finishes it at once.
        if session.wait_for_user(authorize_url):
            session.mark_opened_in_browser(self._open_url(authorize_url))
        view = session.view()
        self._logger.info(
            "login_started",
            login_id=session.login_id,
            provider=provider,
            status=view.status.value,
            opened_in_browser=view.opened_in_browser,
            deadline_s=runner.deadline_s,
        )
        remaining = max(0.0, runner.deadline_s - (time.monotonic() - started))
        threading.Thread(
            target=self._watch,
            args=(session, remaining),
            name=f"login-{provider}",
            daemon=True,
        ).start()
        return session

    def get(self, login_id: str) -> LoginSession:
        """The session with this id, or LoginNotFound."""
        with self._lock:
            session = self._sessions.get(login_id)
        if session is None:
            raise LoginNotFound("no login session with this id")
        return session

    def cancel(self, login_id: str) -> LoginSession:
        """Cancel the session if it is still active, releasing its runner before returning."""
        session = self.get(login_id)
        if session.cancel():
            self._finish(session)
        return session

    def close(self) -> None:
        """Cancel every active session (agent shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.cancel():
                self._finish(session)

    def _watch(self, session: LoginSession, remaining_s: float) -> None:
        """Wait for the session to end, failing it with "timeout" at its deadline."""
        if not session.wait_until_ended(remaining_s):
            session.fail(ERROR_TIMEOUT)
        self._finish(session)

    def _finish(self, session: LoginSession) -> None:
        """Release the runner and count the outcome; only the first caller does anything."""
        with self._lock:
            runner = self._runners.pop(session.login_id, None)
        if runner is None:
            return
        runner.cancel()
        outcome = session.outcome or LoginOutcome.FAILED
        self._metrics.observe_login(provider=session.provider, outcome=outcome)
        view = session.view()
        self._logger.info(
            "login_ended",
            login_id=session.login_id,
            provider=session.provider,
            status=view.status.value,
            outcome=outcome.value,
            error=view.error,
        )

    def _forget_oldest_ended(self) -> None:
        """Drop the oldest ended sessions beyond MAX_ENDED_SESSIONS; call with the lock held."""
        ended = [
            login_id
            for login_id, session in self._sessions.items()
            if session.status.ended and login_id not in self._runners
        ]
        for login_id in ended[: max(0, len(ended) - MAX_ENDED_SESSIONS)]:
            del self._sessions[login_id]
