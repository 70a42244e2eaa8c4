"""Settings read from the environment: each variable's default is its field's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import ConfigError


def test_an_empty_environment_reads_exactly_the_fields_defaults(tmp_path: Path) -> None:
    read = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path)})

    assert read == Settings(state_dir=tmp_path)


def test_an_empty_number_or_choice_falls_back_to_the_fields_default(tmp_path: Path) -> None:
    env = {
        "HEARTH_STATE_DIR": str(tmp_path),
        "HEARTH_PORT": "",
        "HEARTH_MEMORY_SHARE": "",
        "HEARTH_VMM": "",
        "HEARTH_PREPARE_TEMPLATES": "",
    }

    read = Settings.from_env(env)

    defaults = Settings()
    assert (read.port, read.memory_share, read.vmm, read.prepare_templates) == (
        defaults.port,
        defaults.memory_share,
        defaults.vmm,
        defaults.prepare_templates,
    )


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("HEARTH_PORT", "4100", "port", 4100),
        ("HEARTH_WEBHOOK_BACKOFF_S", "0.5", "webhook_backoff_s", 0.5),
        ("HEARTH_VM_IDLE_ACTION", "destroy", "vm_idle_action", "destroy"),
        ("HEARTH_BROWSER_DEVTOOLS", "1", "browser_devtools", True),
        ("HEARTH_PREPARE_TEMPLATES", "0", "prepare_templates", False),
        ("HEARTH_OIDC_CLIENT_ID", "", "oidc_client_id", ""),
        ("HEARTH_AGENT_MIN_VERSION", " 0.2.0 ", "agent_min_version", "0.2.0"),
    ],
)
def test_a_set_variable_reaches_its_field(
    tmp_path: Path, name: str, value: str, field: str, expected: object
) -> None:
    read = Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path), name: value})

    assert getattr(read, field) == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HEARTH_PORT", "0", "HEARTH_PORT must be between 1 and 65535, got 0"),
        ("HEARTH_MEMORY_SHARE", "lots", "HEARTH_MEMORY_SHARE must be a number, got 'lots'"),
        ("HEARTH_CLI_EGRESS", "open", "HEARTH_CLI_EGRESS must be one of proxy, off, got 'open'"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"HEARTH_STATE_DIR": str(tmp_path), name: value})

    assert str(raised.value) == message


def test_keys_read_from_the_environment_stay_out_of_the_repr() -> None:
    shown = repr(Settings(master_key="m" * 44, key_hash_secret="s" * 44, admin_key="a" * 40))

    assert "m" * 44 not in shown
    assert "s" * 44 not in shown
    assert "a" * 40 not in shown
