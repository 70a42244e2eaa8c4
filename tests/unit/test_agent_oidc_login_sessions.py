"""The login-session framework the OIDC runner plugs into: lifecycle, registry, deadline, metrics.

The registry is driven with a scripted runner here (it is the code under test, not the runner);
the real OIDC runner is exercised end to end in ``tests/integration/test_agent_login.py``.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from hearth_agent.errors import AgentError
from hearth_agent.log import JsonLogger
from hearth_agent.login import (
    MAX_ENDED_SESSIONS,
    TRANSITIONS,
    LoginActive,
    LoginNotFound,
    LoginOutcome,
    LoginRegistry,
    LoginSession,
    LoginStatus,
)
from hearth_agent.metrics import AgentMetrics

URL = "https://id.example.test/auth?state=s3cret-state"


class ScriptedRunner:
    """A runner that returns URL (or raises ``failure``) and records its cancels."""

    def __init__(self, *, deadline_s: float = 60.0, failure: Exception | None = None) -> None:
        self._deadline_s = deadline_s
        self._failure = failure
        self.session: LoginSession | None = None
        self.cancels = 0

    @property
    def deadline_s(self) -> float:
        return self._deadline_s

    def start(self, session: LoginSession) -> str:
        self.session = session
        if self._failure is not None:
            raise self._failure
        return URL

    def cancel(self) -> None:
        self.cancels += 1


class RecordingMetrics:
    """Counts observed login outcomes."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, LoginOutcome]] = Counter()

    def observe_login(self, *, provider: str, outcome: LoginOutcome) -> None:
        self.outcomes[(provider, outcome)] += 1


@pytest.fixture
def log_stream() -> io.StringIO:
    """Captures the registry's JSON log."""
    return io.StringIO()


@pytest.fixture
def metrics() -> RecordingMetrics:
    """The registry's counters."""
    return RecordingMetrics()


@pytest.fixture
def opened() -> list[str]:
    """URLs the registry asked the browser to open."""
    return []


@pytest.fixture
def registry(
    log_stream: io.StringIO, metrics: RecordingMetrics, opened: list[str]
) -> LoginRegistry:
    """A registry whose browser accepts every URL."""

    def open_url(url: str) -> bool:
        opened.append(url)
        return True

    return LoginRegistry(logger=JsonLogger(stream=log_stream), metrics=metrics, open_url=open_url)


def wait_for(predicate: Callable[[], bool], what: str, deadline_s: float = 5.0) -> None:
    """Poll ``predicate`` until it returns true."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


# --- the session ------------------------------------------------------------------------------


def test_only_starting_and_waiting_sessions_can_move() -> None:
    assert {status for status in LoginStatus if status.ended} == {
        LoginStatus.CAPTURED,
        LoginStatus.FAILED,
        LoginStatus.CANCELLED,
    }
    assert LoginStatus.CAPTURED not in TRANSITIONS[LoginStatus.STARTING]


def test_session_moves_are_compare_and_set() -> None:
    session = LoginSession(login_id="l1", provider="oidc")

    assert not session.capture(b"{}")  # not waiting for the user yet
    assert session.wait_for_user(URL)
    assert session.capture(b'{"a": 1}')
    assert not session.cancel()
    assert not session.fail("late")
    view = session.view()
    assert (view.status, view.error, view.authorize_url) == (LoginStatus.CAPTURED, None, URL)
    assert session.document == b'{"a": 1}'
    assert session.outcome is LoginOutcome.CAPTURED


def race_capture_against_cancel(session: LoginSession) -> list[bool]:
    """Capture and cancel ``session`` from two threads released at once; both results."""
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def run(move: Callable[[], bool]) -> None:
        barrier.wait()
        results.append(move())

    threads = [
        threading.Thread(target=run, args=(lambda: session.capture(b"{}"),)),
        threading.Thread(target=run, args=(session.cancel,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_only_one_of_two_racing_outcomes_wins() -> None:
    for _ in range(50):
        session = LoginSession(login_id="l", provider="oidc")
        session.wait_for_user(URL)

        results = race_capture_against_cancel(session)

        assert sorted(results) == [False, True]
        assert (session.document is not None) == (session.status is LoginStatus.CAPTURED)


def test_timeout_is_an_outcome_of_its_own() -> None:
    timed_out = LoginSession(login_id="a", provider="oidc")
    failed = LoginSession(login_id="b", provider="oidc")
    timed_out.fail("timeout")
    failed.fail("access_denied")

    assert timed_out.outcome is LoginOutcome.TIMEOUT
    assert failed.outcome is LoginOutcome.FAILED
    assert LoginSession(login_id="c", provider="oidc").outcome is None


def test_session_repr_never_shows_the_document() -> None:
    session = LoginSession(login_id="l1", provider="oidc")
    session.wait_for_user(URL)
    session.capture(b'{"access_token": "at-s3cret"}')

    assert "s3cret" not in repr(session)
    assert "s3cret" not in repr(session.view())


# --- the registry -----------------------------------------------------------------------------


def test_start_waits_for_the_user_and_opens_the_url(
    registry: LoginRegistry, opened: list[str]
) -> None:
    session = registry.start("oidc", ScriptedRunner())

    view = session.view()
    assert view.status is LoginStatus.WAITING_FOR_USER
    assert view.opened_in_browser is True
    assert opened == [URL]
    assert registry.get(session.login_id) is session


def test_one_active_login_per_provider(registry: LoginRegistry) -> None:
    first = registry.start("oidc", ScriptedRunner())

    with pytest.raises(LoginActive, match=first.login_id):
        registry.start("oidc", ScriptedRunner())
    other = registry.start("codex", ScriptedRunner())  # other providers are independent
    registry.cancel(first.login_id)
    again = registry.start("oidc", ScriptedRunner())

    assert LoginActive.http_status == 409
    assert other.status is again.status is LoginStatus.WAITING_FOR_USER


def test_a_runner_that_cannot_start_fails_the_session_and_is_released(
    registry: LoginRegistry, metrics: RecordingMetrics
) -> None:
    class Refused(AgentError):
        code = "discovery_failed"
        http_status = 502

    runner = ScriptedRunner(failure=Refused("issuer unreachable"))

    with pytest.raises(Refused):
        registry.start("oidc", runner)

    assert runner.session is not None
    assert runner.session.view().error == "discovery_failed"
    assert runner.cancels == 1
    assert metrics.outcomes == Counter({("oidc", LoginOutcome.FAILED): 1})
    registry.start("oidc", ScriptedRunner())  # the slot is free


def test_cancel_releases_the_runner_before_returning_and_only_once(
    registry: LoginRegistry, metrics: RecordingMetrics
) -> None:
    runner = ScriptedRunner()
    session = registry.start("oidc", runner)

    registry.cancel(session.login_id)
    registry.cancel(session.login_id)

    assert session.status is LoginStatus.CANCELLED
    assert runner.cancels == 1
    assert metrics.outcomes == Counter({("oidc", LoginOutcome.CANCELLED): 1})


def test_deadline_fails_the_login_with_timeout(
    registry: LoginRegistry, metrics: RecordingMetrics
) -> None:
    runner = ScriptedRunner(deadline_s=0.1)
    session = registry.start("oidc", runner)

    # The registry releases the runner, then counts: wait for the count, the last step.
    wait_for(lambda: bool(metrics.outcomes), "the login to be counted")

    assert runner.cancels == 1
    assert (session.status, session.view().error) == (LoginStatus.FAILED, "timeout")
    assert metrics.outcomes == Counter({("oidc", LoginOutcome.TIMEOUT): 1})


def test_capture_by_the_runner_releases_it_and_is_counted(
    registry: LoginRegistry, metrics: RecordingMetrics, log_stream: io.StringIO
) -> None:
    runner = ScriptedRunner()
    session = registry.start("oidc", runner)

    assert session.capture(b'{"access_token": "at-s3cret"}')
    # Released, counted, then logged: wait for the log line, the last step.
    wait_for(lambda: '"login_ended"' in log_stream.getvalue(), "the login's end to be logged")

    assert runner.cancels == 1
    assert metrics.outcomes == Counter({("oidc", LoginOutcome.CAPTURED): 1})
    assert "s3cret" not in log_stream.getvalue()
    assert '"login_ended"' in log_stream.getvalue()


def test_unknown_ids_are_login_not_found(registry: LoginRegistry) -> None:
    with pytest.raises(LoginNotFound):
        registry.get("nope")
    with pytest.raises(LoginNotFound):
        registry.cancel("nope")
    assert LoginNotFound.http_status == 404


def test_old_ended_sessions_are_forgotten(registry: LoginRegistry) -> None:
    ended = []
    for _ in range(MAX_ENDED_SESSIONS + 3):
        session = registry.start("oidc", ScriptedRunner())
        registry.cancel(session.login_id)
        ended.append(session.login_id)
    registry.start("oidc", ScriptedRunner())

    with pytest.raises(LoginNotFound):
        registry.get(ended[0])
    assert registry.get(ended[-1]).status is LoginStatus.CANCELLED


def test_close_cancels_every_active_login(registry: LoginRegistry) -> None:
    runners = [ScriptedRunner(), ScriptedRunner()]
    sessions = [registry.start(name, r) for name, r in zip(("oidc", "codex"), runners, strict=True)]

    registry.close()

    assert [s.status for s in sessions] == [LoginStatus.CANCELLED] * 2
    assert [r.cancels for r in runners] == [1, 1]


def test_agent_metrics_render_every_login_series_from_the_start() -> None:
    agent_metrics = AgentMetrics(version="0.1.0", providers=("oidc",))
    agent_metrics.observe_login(provider="oidc", outcome=LoginOutcome.TIMEOUT)

    lines = agent_metrics.render().splitlines()

    assert "# TYPE hearth_agent_logins_total counter" in lines
    assert 'hearth_agent_logins_total{provider="oidc",outcome="timeout"} 1' in lines
    for outcome in ("captured", "failed", "cancelled"):
        assert f'hearth_agent_logins_total{{provider="oidc",outcome="{outcome}"}} 0' in lines
