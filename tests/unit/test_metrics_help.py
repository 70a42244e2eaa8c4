"""The controller's metrics say in their HELP text what their label values are."""

from __future__ import annotations

from hearth.credentials.expiry import STATES
from hearth.metrics import ControllerMetrics


def _help_line(name: str) -> str:
    text = ControllerMetrics().render().decode()
    return next(line for line in text.splitlines() if line.startswith(f"# HELP {name} "))


def test_credentials_help_names_every_state_the_gauge_is_set_for() -> None:
    help_line = _help_line("hearth_credentials")
    assert [state for state in STATES if state not in help_line] == []
