"""What the real vendor CLIs printed in headless mode against the provider stand-ins.

``tests/data/runs/<provider>-<case>.jsonl`` holds a CLI's stdout, one line per line, and the
``.meta.json`` beside it how the CLI was run and how it ended (``exit_code``, ``stderr_tail``).
They were captured by running each real CLI through Hearth's egress proxy against the stand-ins
(``.venv/bin/python -m tests.standins.capture [provider…] [--case …]`` captures them again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUNS_DATA = Path(__file__).parents[1] / "data" / "runs"


@dataclass(frozen=True)
class Capture:
    """One captured headless run: stdout lines, exit code, stderr tail."""

    lines: list[str]
    exit_code: int
    stderr: str


def capture(provider: str, case: str) -> Capture:
    """The capture of ``provider``'s CLI in ``case`` (``answer``, ``unauthorized``, …)."""
    lines = (RUNS_DATA / f"{provider}-{case}.jsonl").read_text().splitlines()
    meta = json.loads((RUNS_DATA / f"{provider}-{case}.meta.json").read_text())
    return Capture(
        lines=[line for line in lines if line.strip()],
        exit_code=int(meta.get("exit_code") or 0),
        stderr=str(meta.get("stderr_tail") or ""),
    )


def answer_lines(provider: str) -> list[str]:
    """The lines of a normal answer."""
    return capture(provider, "answer").lines
