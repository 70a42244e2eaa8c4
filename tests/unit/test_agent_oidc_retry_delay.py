"""The ``oidc`` refresher's wait between rounds: 2 s, doubling while rounds fail, at most 5 min."""

from __future__ import annotations

from hearth_agent.oidc_refresh import RetryDelay


def test_failing_rounds_wait_two_seconds_doubling_up_to_five_minutes() -> None:
    delay = RetryDelay()
    waits = [delay.after(failures) for failures in range(12)]
    assert waits == [2, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert delay.after(10_000) == 300


def test_a_cap_below_the_interval_never_shortens_the_interval() -> None:
    assert RetryDelay(interval_s=2, max_s=1).after(5) == 2
