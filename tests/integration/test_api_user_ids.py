"""User ids a key or VM may be made for: what the API can address, and never the warm pool's
owner (its pooled VMs would count against that user's limits, and a key for it was 201)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hearth.control.pool import POOL_USER
from tests.conftest import hearth_cli
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/keys", {"userId": POOL_USER}),
        ("/api/vms", {"userId": POOL_USER}),
        ("/api/auth/start", {"userId": POOL_USER, "provider": "claude_code"}),
    ],
)
async def test_the_pools_owner_is_no_ones_user_id(
    api: Api, route: str, body: dict[str, str]
) -> None:
    refused = await api.client.post(route, json=body, headers=api.headers())
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_input"
    assert "reserved for the warm pool's VMs" in error["message"]


@pytest.mark.parametrize("user", [POOL_USER, "a b", "a/b", "ünï", "-x"])
async def test_hearth_keys_create_refuses_what_the_api_would(
    api: Api, tmp_path: Path, user: str
) -> None:
    env = {"HEARTH_DATABASE_URL": api.settings.database(), "HEARTH_STATE_DIR": str(tmp_path)}
    result = await asyncio.to_thread(
        hearth_cli, "keys", "create", "--user", user, env=env, timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "user id" in result.stderr
    assert user not in [u.id for u in await api.ctl.store.users.list()], "nothing was made"
