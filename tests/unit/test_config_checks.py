"""Settings.from_env refuses, naming the variable, what would only fail later: an empty or
malformed host, malformed keys, network pool and egress pins, a workspace the quota cannot hold."""

from __future__ import annotations

import base64

import pytest

from hearth.config import Settings
from hearth.control.disk_use import NEW_VM_LAYER_MIB
from hearth.errors import ConfigError

GOOD_KEY = base64.b64encode(bytes(range(32))).decode()


def test_empty_host_means_loopback_not_every_interface() -> None:
    assert Settings.from_env({"HEARTH_HOST": ""}).host == "127.0.0.1"
    assert Settings.from_env({}).host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::1", "10.1.2.3", "hearth.example.com", "box"])
def test_ip_addresses_and_host_names_are_accepted_as_host(host: str) -> None:
    assert Settings.from_env({"HEARTH_HOST": host}).host == host


@pytest.mark.parametrize("host", ["bad host", "http://x", "-x.com", "a..b", "1.2.3.4:80"])
def test_a_host_that_is_neither_address_nor_name_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="HEARTH_HOST"):
        Settings.from_env({"HEARTH_HOST": host})


@pytest.mark.parametrize("name", ["HEARTH_MASTER_KEY", "HEARTH_KEY_HASH_SECRET"])
@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_malformed_key_is_refused_without_quoting_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as refused:
        Settings.from_env({name: value})
    assert value not in str(refused.value)


@pytest.mark.parametrize("name", ["HEARTH_MASTER_KEY", "HEARTH_KEY_HASH_SECRET"])
def test_a_well_formed_key_is_kept(name: str) -> None:
    settings = Settings.from_env({name: GOOD_KEY})
    assert GOOD_KEY in (settings.master_key, settings.key_hash_secret)


@pytest.mark.parametrize("pool", ["nope", "10.0.0.0/30", "fd00::/64", "10.0.0.1/8"])
def test_a_network_pool_the_slot_pool_cannot_use_is_refused(pool: str) -> None:
    with pytest.raises(ConfigError, match="HEARTH_NETWORK_POOL"):
        Settings.from_env({"HEARTH_NETWORK_POOL": pool})


def test_a_usable_network_pool_is_kept() -> None:
    assert Settings.from_env({"HEARTH_NETWORK_POOL": "10.200.0.0/16"}).network_pool == (
        "10.200.0.0/16"
    )


@pytest.mark.parametrize(
    "pins",
    [
        "api.anthropic.com=api-pin.internal:443",  # a target must be an IP address
        "api.anthropic.com=10.0.0.5",  # and have a port
        "api.anthropic.com:99999=10.0.0.5:443",  # a pin's own port must be a port
    ],
)
def test_an_egress_pin_the_proxy_cannot_use_is_refused(pins: str) -> None:
    with pytest.raises(ConfigError, match="HEARTH_EGRESS_PINS"):
        Settings.from_env({"HEARTH_EGRESS_PINS": pins})


def test_a_good_egress_pin_is_kept() -> None:
    settings = Settings.from_env({"HEARTH_EGRESS_PINS": "api.anthropic.com=127.0.0.1:8443"})
    assert ("api.anthropic.com", "127.0.0.1:8443") in settings.egress_pins


def test_a_workspace_the_quota_cannot_hold_with_a_new_vm_is_refused() -> None:
    env = {"HEARTH_WORKSPACE_SIZE_MIB": "16384", "HEARTH_USER_DISK_QUOTA_MIB": "16384"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert "HEARTH_WORKSPACE_SIZE_MIB" in str(refused.value)
    assert "HEARTH_USER_DISK_QUOTA_MIB" in str(refused.value)


def test_a_workspace_that_just_fits_or_none_at_all_is_accepted() -> None:
    fits = str(16384 - NEW_VM_LAYER_MIB)
    Settings.from_env({"HEARTH_WORKSPACE_SIZE_MIB": fits, "HEARTH_USER_DISK_QUOTA_MIB": "16384"})
    Settings.from_env({"HEARTH_WORKSPACE_SIZE_MIB": "0", "HEARTH_USER_DISK_QUOTA_MIB": "1"})
