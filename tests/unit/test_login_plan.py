"""What the controller asks of a Browser VM per provider, and the egress each login gets."""

from __future__ import annotations

import re

import pytest

from hearth.auth.providers import (
    AGENT_LOGIN_GRACE_S,
    OIDC_LOGIN_MAX_S,
    VENDOR_EGRESS,
    login_plan,
)
from hearth.config import Settings
from hearth.errors import ConfigError, InvalidInput
from hearth.images.layout import guest_asset
from hearth.network.egress import AllowRule
from hearth.node.egress import EGRESS_PROXY_URL


@pytest.mark.parametrize("provider", ["codex", "claude_code", "gemini_cli"])
def test_vendor_logins_run_the_cli_and_may_reach_only_their_vendor(provider: str) -> None:
    plan = login_plan(provider, Settings.from_env({}))
    assert plan.start_body == {"provider": provider, "timeout_s": 600.0 + AGENT_LOGIN_GRACE_S}
    assert plan.egress_allow == VENDOR_EGRESS[provider]
    assert plan.guest_forwards == ()
    for entry in plan.egress_allow:
        AllowRule.parse(entry)  # every default entry is a valid rule


def test_egress_off_gives_no_proxy_and_an_operator_list_replaces_the_defaults() -> None:
    off = Settings.from_env({"HEARTH_LOGIN_EGRESS": "off"})
    assert login_plan("codex", off).egress_allow == ()
    narrowed = Settings.from_env({"HEARTH_LOGIN_EGRESS_ALLOW": "auth.openai.com, *.oaistatic.com"})
    assert login_plan("codex", narrowed).egress_allow == ("auth.openai.com", "*.oaistatic.com")


def test_a_forwarded_test_issuer_needs_no_proxy_and_a_remote_one_is_allowed_by_host() -> None:
    forwarded = Settings.from_env(
        {"HEARTH_OIDC_ISSUER": "http://10.0.2.100:9000", "HEARTH_OIDC_UPSTREAM_PORT": "41000"}
    )
    plan = login_plan("oidc", forwarded)
    assert plan.egress_allow == ()
    assert [f.host_port for f in plan.guest_forwards] == [41000]
    remote = login_plan("oidc", Settings.from_env({"HEARTH_OIDC_ISSUER": "https://id.example"}))
    assert remote.egress_allow == ("id.example:443",)


@pytest.mark.parametrize(
    ("setting", "sent"), [("900", 900.0 + AGENT_LOGIN_GRACE_S), ("7200", OIDC_LOGIN_MAX_S)]
)
def test_an_oidc_login_is_given_the_login_timeout_up_to_the_agents_most(
    setting: str, sent: float
) -> None:
    # Without it the Browser VM's agent ended an oidc login after its own 10 min. A few
    # seconds more than the setting: the controller's clock, which starts first, ends it.
    settings = Settings.from_env(
        {"HEARTH_OIDC_ISSUER": "https://id.example.com", "HEARTH_LOGIN_TIMEOUT_S": setting}
    )
    assert login_plan("oidc", settings).start_body["timeout_s"] == sent


def test_unknown_provider_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        login_plan("github", Settings.from_env({}))


def test_egress_settings_are_parsed_and_bad_ones_refused() -> None:
    settings = Settings.from_env(
        {"HEARTH_EGRESS_PINS": "auth.openai.com:443=127.0.0.1:8443, id.test=10.1.2.3:443"}
    )
    assert settings.egress_pins == (
        ("auth.openai.com:443", "127.0.0.1:8443"),
        ("id.test", "10.1.2.3:443"),
    )
    with pytest.raises(ConfigError, match="HEARTH_EGRESS_PINS"):
        Settings.from_env({"HEARTH_EGRESS_PINS": "auth.openai.com"})
    with pytest.raises(ConfigError, match="HEARTH_LOGIN_EGRESS"):
        Settings.from_env({"HEARTH_LOGIN_EGRESS": "open"})


def test_the_browser_image_points_chromium_at_the_proxy_address_the_controller_forwards() -> None:
    script = guest_asset("hearth-browser").decode()
    found = re.search(r"^EGRESS_PROXY=(\S+)$", script, re.MULTILINE)
    assert found is not None
    assert found.group(1) == EGRESS_PROXY_URL
    assert '--proxy-server="$EGRESS_PROXY"' in script


def test_a_remote_issuer_must_be_https_since_the_proxy_only_tunnels() -> None:
    plain = {"HEARTH_OIDC_ISSUER": "http://id.example"}
    with pytest.raises(ConfigError, match="must be https"):
        login_plan("oidc", Settings.from_env(plain))
    # Without egress there is no proxy to go through, and nothing to refuse up front.
    assert (
        login_plan("oidc", Settings.from_env(plain | {"HEARTH_LOGIN_EGRESS": "off"})).egress_allow
        == ()
    )
