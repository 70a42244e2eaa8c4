"""The vendor CLI a login starts gets the signal dispositions and locale of a fresh exec, not
what the agent's interpreter did to itself at its start (SIGPIPE and SIGXFSZ ignored, LC_CTYPE
coerced to C.UTF-8)."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth_agent import __version__
from hearth_agent.log import JsonLogger
from hearth_agent.login import LoginRegistry
from hearth_agent.metrics import AgentMetrics
from hearth_agent.providers import SUPPORTED_PROVIDERS
from hearth_agent.vendor import VendorLogin, VendorLoginRunner

URL = "https://login.example.test/authorize?client_id=fake-client"
# A stand-in CLI in sh (a Python one would ignore SIGPIPE itself): it writes what it was given
# to a report, hands its URL to $BROWSER as the vendor CLIs do, and waits for the browser.
_STAND_IN = """\
#!/bin/sh
{{ grep '^SigIgn:' /proc/self/status; env | grep '^LC_' | sort; }} > {report}
"$BROWSER" '{url}'
exec sleep 60
"""


@pytest.fixture
def runners() -> Iterator[list[VendorLoginRunner]]:
    """The runners a test starts, cancelled afterwards (their CLI killed, their home removed)."""
    started: list[VendorLoginRunner] = []
    yield started
    for runner in started:
        runner.cancel()


def ignored_signals(sig_ign_line: str) -> set[int]:
    """The signal numbers a ``SigIgn:`` line of /proc/<pid>/status marks as ignored."""
    mask = int(sig_ign_line.split(":", 1)[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


@pytest.mark.parametrize(
    ("recipe_env", "expected_lc"),
    [
        ({}, []),
        # A C locale makes the interpreter on the way coerce LC_CTYPE: that must not reach the CLI.
        ({"LANG": "C"}, []),
        ({"LANG": "C", "LC_CTYPE": "C"}, ["LC_CTYPE=C"]),
    ],
)
def test_the_vendor_cli_starts_with_default_sigpipe_and_sigxfsz_and_its_own_locale(
    tmp_path: Path,
    runners: list[VendorLoginRunner],
    recipe_env: dict[str, str],
    expected_lc: list[str],
) -> None:
    bin_dir, report = tmp_path / "bin", tmp_path / "report"
    bin_dir.mkdir()
    (bin_dir / "standin").write_text(_STAND_IN.format(report=report, url=URL))
    (bin_dir / "standin").chmod(0o755)
    logger = JsonLogger(stream=io.StringIO())
    registry = LoginRegistry(
        logger=logger,
        metrics=AgentMetrics(version=__version__, providers=SUPPORTED_PROVIDERS),
        open_url=lambda url: True,
    )
    runner = VendorLoginRunner(
        VendorLogin(provider="codex", command=("standin",), env=recipe_env),
        work_root=tmp_path / "logins",
        logger=logger,
        search_path=f"{bin_dir}:/usr/bin:/bin",
    )
    runners.append(runner)

    session = registry.start("codex", runner)

    assert session.view().authorize_url == URL
    sig_ign, *lc_lines = report.read_text().splitlines()
    ignored = ignored_signals(sig_ign)
    assert signal.SIGPIPE not in ignored
    assert signal.SIGXFSZ not in ignored
    assert lc_lines == expected_lc
