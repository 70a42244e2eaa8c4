"""``hearth serve`` raises its soft limit on open files to the hard one, so that a few busy VMs'
egress tunnels do not use up the usual 1024."""

from __future__ import annotations

import resource
import subprocess
import sys


def _limits_after_raising(soft: int) -> tuple[int, int]:
    script = (
        "import resource\n"
        "from hearth.cli.server import raise_open_file_limit\n"
        "raise_open_file_limit()\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    done = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    low, high = done.stdout.split()
    return int(low), int(high)


def test_a_low_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    expected = min(expected, 1 << 20)
    assert expected > 1024, "this machine's hard limit leaves nothing to raise"

    assert _limits_after_raising(1024) == (expected, hard)


def test_a_soft_limit_at_the_hard_one_is_left_as_it_is() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20

    assert _limits_after_raising(soft) == (soft, hard)
