"""scripts/setup.sh's systemd unit takes every exported HEARTH_* setting, through a 0600
EnvironmentFile whose values read back exactly as they were exported."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"
TRICKY = "a b\"c\\d$e`f'g%h"


def _bash(script: str, env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    done = subprocess.run(
        ["bash", "-c", f"source {SETUP}\n{script}"],
        env=base | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_every_exported_setting_reaches_a_private_environment_file(tmp_path: Path) -> None:
    env_file = tmp_path / "hearth.env"
    exported = {
        "HEARTH_MASTER_KEY": "bWFzdGVyIGtleSBvZiAzMiBieXRlcyBleGFjdGx5IQ==",
        "HEARTH_ADMIN_KEY": TRICKY,
        "HEARTH_DATABASE_URL": "postgresql://h:p%40ss@127.0.0.1/h",
        "HEARTH_HOST": "",
    }
    _bash(f'write_env_file "{env_file}"', exported)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # systemd's quoting rules are the shell's: read it back as a shell would.
    names = " ".join(exported)
    shown = _bash(
        f'set -a; source "{env_file}"; for n in {names}; do printf "%s\\0" "${{!n}}"; done', {}
    )
    assert shown.split("\0")[:-1] == list(exported.values())


def test_a_value_with_a_line_break_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / "hearth.env"
    done = subprocess.run(
        ["bash", "-c", f'source {SETUP}; write_env_file "{env_file}"'],
        env={"PATH": os.environ["PATH"], "HEARTH_ADMIN_KEY": "a\nb"},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "HEARTH_ADMIN_KEY" in done.stderr


def test_the_unit_reads_its_settings_from_the_environment_file() -> None:
    unit = _bash("render_unit /opt/hearth /var/lib/hearth/hearth.env", {})
    assert "EnvironmentFile=/var/lib/hearth/hearth.env" in unit
    assert "ExecStart=/opt/hearth/.venv/bin/hearth serve" in unit
    assert "Environment=HEARTH" not in unit
