"""Each vendor CLI's headless command line (``hearth.runs.run_command``) against the pinned CLI
itself: every option Hearth passes is one its ``--help`` documents. Here, not among the unit
tests, because the pinned CLIs exist once the cli image is built (the real-VM tier builds it)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hearth.images.manifest import ImageDir
from hearth.images.vendor import GUEST_VENDOR_DIR, vendor_key
from hearth.runs import run_command
from hearth_agent.wire import Provider

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def _vendor_bin() -> Path:
    cache = Path(os.environ.get("HEARTH_CACHE_DIR", "/var/cache/hearth"))
    return cache / "vendor" / vendor_key() / "root" / GUEST_VENDOR_DIR / "node_modules" / ".bin"


def _help(home: Path, *argv: str) -> str:
    program = _vendor_bin() / argv[0]
    assert program.exists(), f"the cli image's build left no {program}"
    env = {
        "PATH": f"{_vendor_bin()}:/usr/bin:/bin",
        "HOME": str(home),
        # --help reaches no network; should it try, it gets nowhere.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "GEMINI_CLI_NO_RELAUNCH": "true",
    }
    done = subprocess.run(
        [str(program), *argv[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(
    ("provider", "help_of"),
    [
        (Provider.CLAUDE_CODE, ("claude",)),
        (Provider.CODEX, ("codex", "exec")),
        (Provider.GEMINI_CLI, ("gemini",)),
    ],
)
def test_every_option_is_one_the_pinned_cli_documents(
    cli_image: ImageDir, provider: Provider, help_of: tuple[str, ...], tmp_path: Path
) -> None:
    # The cli image's build (once per session) leaves the pinned CLIs in the cache.
    said = _help(tmp_path, *help_of)
    argv = run_command(provider, prompt="hi", model="m", resume="r").argv
    options = [arg for arg in argv if arg.startswith("-") and arg != "-"]
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", said), option
    for value in ("stream-json", "bypassPermissions", "yolo", "never"):
        if value in argv:
            assert value in said, value
    if provider is Provider.CODEX:
        assert "resume" in said
        assert "--dangerously-bypass-approvals-and-sandbox" in _help(
            tmp_path, "codex", "exec", "resume"
        )
